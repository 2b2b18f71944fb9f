//! Minimal `.npy` reader/writer for little-endian float32 arrays in C order (format v1, v2, v3).

use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("npy file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("npy file {path}: {msg}")]
    Format { path: PathBuf, msg: String },
}

/// Reads a `<f4` C-order `.npy` file: `(shape, data)`; a 0-d array has an empty shape.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_f32(&bytes).map_err(|msg| NpyError::Format {
        path: path.to_path_buf(),
        msg,
    })
}

/// Parses `.npy` bytes holding a `<f4` C-order array. The error is a message without the path.
pub fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err("truncated header".into());
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| "header is not text".to_string())?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    if descr != "<f4" {
        return Err(format!(
            "dtype '{descr}' is not supported (expected little-endian float32 '<f4')"
        ));
    }
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    match fortran.trim() {
        "False" => {}
        "True" => return Err("Fortran-order arrays are not supported".into()),
        other => return Err(format!("bad fortran_order value '{other}'")),
    }
    let shape_s = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape_s = shape_s.trim();
    if !(shape_s.starts_with('(') && shape_s.ends_with(')')) {
        return Err(format!("bad shape '{shape_s}'"));
    }
    let shape: Vec<usize> = shape_s[1..shape_s.len() - 1]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape '{shape_s}'"))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let need = count.checked_mul(4).ok_or("shape overflows")?;
    let data = &bytes[data_start..];
    if data.len() < need {
        return Err(format!(
            "truncated data: shape {shape:?} needs {need} bytes, file has {} after the header",
            data.len()
        ));
    }
    let values = data[..need]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

/// Finds `'key': value` in the header dict; the value runs to the next top-level `,` or `}`.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let pos = header
        .find(&pat_single)
        .map(|p| p + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|p| p + pat_double.len()))?;
    let rest = header[pos..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Serialises a `<f4` C-order array as `.npy` v1 bytes.
pub fn to_bytes_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy: shape does not match data length"
    );
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad with spaces so that the data starts at a multiple of 64, ending with '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a `<f4` C-order `.npy` v1 file.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    std::fs::write(path, to_bytes_f32(shape, data)).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(major);
        out.push(0);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn round_trip_v1() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = to_bytes_f32(&[2, 3, 4], &data);
        assert_eq!((bytes.len() - data.len() * 4) % 64, 0);
        let (shape, back) = parse_f32(&bytes).unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(back, data);
    }

    #[test]
    fn one_d_and_scalar() {
        let (s, d) = parse_f32(&to_bytes_f32(&[3], &[1.0, 2.0, 3.0])).unwrap();
        assert_eq!((s, d), (vec![3], vec![1.0, 2.0, 3.0]));
        let bytes = with_header(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n",
            &f32_bytes(&[7.5]),
        );
        assert_eq!(parse_f32(&bytes).unwrap(), (vec![], vec![7.5]));
    }

    #[test]
    fn version_2_header() {
        let bytes = with_header(
            2,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }\n",
            &f32_bytes(&[1.0, -1.0]),
        );
        assert_eq!(parse_f32(&bytes).unwrap(), (vec![1, 2], vec![1.0, -1.0]));
    }

    #[test]
    fn key_order_does_not_matter() {
        let bytes = with_header(
            1,
            "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}\n",
            &f32_bytes(&[4.0, 5.0]),
        );
        assert_eq!(parse_f32(&bytes).unwrap(), (vec![2], vec![4.0, 5.0]));
    }

    #[test]
    fn other_dtypes_are_refused() {
        for d in ["<f8", ">f4", "<i4", "|u1"] {
            let h = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': (1,), }}\n");
            let err = parse_f32(&with_header(1, &h, &[0u8; 8])).unwrap_err();
            assert!(err.contains(d) && err.contains("not supported"), "{err}");
        }
    }

    #[test]
    fn fortran_order_is_refused() {
        let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n";
        let err = parse_f32(&with_header(1, h, &[0u8; 16])).unwrap_err();
        assert!(err.contains("Fortran"), "{err}");
    }

    #[test]
    fn truncated_data_and_header() {
        let bytes = to_bytes_f32(&[4, 4], &[0.0; 16]);
        let err = parse_f32(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.contains("truncated data"), "{err}");
        let err = parse_f32(&bytes[..20]).unwrap_err();
        assert!(err.contains("truncated header"), "{err}");
        assert!(parse_f32(b"hello world").unwrap_err().contains("magic"));
    }

    #[test]
    fn read_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("npy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.npy");
        std::fs::write(&p, b"\x93NUMPY\x01\x00\x05\x00{'de").unwrap();
        let e = read_f32(&p).unwrap_err().to_string();
        assert!(e.contains("bad.npy"), "{e}");
        let e = read_f32(&dir.join("missing.npy")).unwrap_err().to_string();
        assert!(e.contains("missing.npy"), "{e}");
        let good = dir.join("good.npy");
        write_f32(&good, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(
            read_f32(&good).unwrap(),
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
