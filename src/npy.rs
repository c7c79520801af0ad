//! Writes NumPy `.npy` files (format 1.0, little-endian f32, C order), so tensors gradcamd
//! computed can be compared with Python tools without any Python in gradcamd.

use std::io::Write;
use std::path::Path;

pub(crate) fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for v in data {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()
}

/// Reads a `.npy` file of little-endian f32 in C order (what [`write_f32`] and numpy's
/// `np.save` of a float32 array write): (shape, data).
pub(crate) fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), String> {
    let b = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = |why: &str| format!("{} is not a float32 .npy file: {why}", path.display());
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("no NumPy magic"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        _ => return Err(bad("unknown version")),
    };
    let header = b
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian float32 in C order is read"));
    }
    let tuple = header
        .split("'shape': (")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = tuple
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = &b[start + hlen..];
    if data.len() != n * 4 {
        return Err(bad(&format!("{} data bytes for shape {shape:?}", data.len())));
    }
    Ok((
        shape,
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_aligned_and_data_follows() {
        let dir = std::env::temp_dir().join(format!("gradcamd-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.npy");
        super::write_f32(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(
            header.contains("'shape': (2, 3)") && header.ends_with('\n'),
            "{header}"
        );
        assert_eq!(b.len(), 10 + hlen + 24);
        assert_eq!(
            f32::from_le_bytes([
                b[10 + hlen + 20],
                b[10 + hlen + 21],
                b[10 + hlen + 22],
                b[10 + hlen + 23]
            ]),
            6.0
        );
        let (shape, data) = super::read_f32(&p).unwrap();
        assert_eq!((shape, data), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        std::fs::write(&p, b"not npy").unwrap();
        assert!(super::read_f32(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
