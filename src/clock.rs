//! UTC calendar time, for file names and reports, without a time crate.

/// Year, month, day, hour, minute, second (UTC) of `secs` since the Unix epoch.
pub(crate) fn utc(secs: i64) -> [i64; 6] {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    [y, m, d, rem / 3600, rem % 3600 / 60, rem % 60]
}

/// `2026-11-26 05:22:00 UTC`.
pub(crate) fn utc_string(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let [y, m, d, hh, mm, ss] = utc(secs.floor() as i64);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates_across_leap_days_and_before_the_epoch() {
        assert_eq!(super::utc(1_795_670_520), [2026, 11, 26, 5, 22, 0]);
        assert_eq!(super::utc(951_782_400), [2000, 2, 29, 0, 0, 0]);
        assert_eq!(super::utc(-1), [1969, 12, 31, 23, 59, 59]);
        assert_eq!(super::utc_string(1_795_670_520.9), "2026-11-26 05:22:00 UTC");
    }
}
