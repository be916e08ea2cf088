//! PyTorch zip checkpoints built byte by byte, as `torch.save` lays them out (protocol-2 pickle
//! in `archive/data.pkl`, one storage per tensor in `archive/data/<key>`), so that tests can make
//! well-formed ones and every kind of malformed one without Python.
use std::io::Write;
use std::path::Path;

/// A protocol-2 pickle, written opcode by opcode.
#[derive(Default, Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    pub fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    pub fn int(&mut self, v: u64) -> &mut Self {
        if v < 256 {
            self.op(&[b'K', v as u8])
        } else if v < (1 << 31) {
            self.0.push(b'J');
            self.0.extend((v as u32).to_le_bytes());
            self
        } else {
            // LONG1 with 8 bytes.
            self.0.extend([0x8a, 8]);
            self.0.extend(v.to_le_bytes());
            self
        }
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
        self
    }
    pub fn ints(&mut self, v: &[u64]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(storage(kind, key, numel), offset, shape, stride, False, OrderedDict())`.
    pub fn tensor(&mut self, t: &Tensor) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b"((")
            .str("storage")
            .global("torch", &t.kind)
            .str(&t.key)
            .str("cpu");
        self.int(t.numel)
            .op(b"tQ")
            .int(t.offset)
            .ints(&t.shape)
            .ints(&t.stride);
        self.op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R");
        self.op(b"tR")
    }
    pub fn stop(&mut self) -> Vec<u8> {
        self.op(b".");
        self.0.clone()
    }
}

/// One tensor of a checkpoint: what the pickle says, and the storage bytes.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub numel: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// A contiguous f32 tensor.
    pub fn f32(name: &str, key: usize, shape: &[usize], values: &[f32]) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(values.len(), n);
        Tensor {
            name: name.into(),
            kind: "FloatStorage".into(),
            key: key.to_string(),
            numel: n as u64,
            offset: 0,
            shape: shape.iter().map(|&d| d as u64).collect(),
            stride: contiguous_strides(shape),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1] as u64;
    }
    s
}

/// The pickle of a state dict `{name: tensor}`, optionally under a key (`{"model": {...}}`).
pub fn state_dict_pickle(tensors: &[Tensor], under: Option<&str>) -> Vec<u8> {
    let mut p = Pickle::new();
    if let Some(k) = under {
        p.op(b"}(").str(k);
    }
    p.op(b"}(");
    for t in tensors {
        p.str(&t.name).tensor(t);
    }
    p.op(b"u");
    if under.is_some() {
        p.op(b"u");
    }
    p.stop()
}

/// A zip archive of `(member name, bytes, deflated?)` entries, in order, written by hand so
/// that tests can make what zip libraries refuse to write (a name twice, say).
pub fn zip(path: &Path, members: &[(String, Vec<u8>, bool)]) {
    let mut out: Vec<u8> = Vec::new();
    let mut central: Vec<u8> = Vec::new();
    let u16le = |v: &mut Vec<u8>, x: u16| v.extend(x.to_le_bytes());
    let u32le = |v: &mut Vec<u8>, x: u32| v.extend(x.to_le_bytes());
    for (name, bytes, deflate) in members {
        let mut crc = flate2::Crc::new();
        crc.update(bytes);
        let data = if *deflate {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        } else {
            bytes.clone()
        };
        let offset = out.len() as u32;
        let method = if *deflate { 8 } else { 0 };
        // Local header.
        u32le(&mut out, 0x0403_4b50);
        for x in [20, 0, method, 0, 0] {
            u16le(&mut out, x);
        }
        for x in [crc.sum(), data.len() as u32, bytes.len() as u32] {
            u32le(&mut out, x);
        }
        u16le(&mut out, name.len() as u16);
        u16le(&mut out, 0);
        out.extend(name.as_bytes());
        out.extend(&data);
        // Its central directory entry.
        u32le(&mut central, 0x0201_4b50);
        for x in [20, 20, 0, method, 0, 0] {
            u16le(&mut central, x);
        }
        for x in [crc.sum(), data.len() as u32, bytes.len() as u32] {
            u32le(&mut central, x);
        }
        for x in [name.len() as u16, 0, 0, 0, 0] {
            u16le(&mut central, x);
        }
        u32le(&mut central, 0);
        u32le(&mut central, offset);
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    u32le(&mut out, 0x0605_4b50);
    for x in [0, 0, members.len() as u16, members.len() as u16] {
        u16le(&mut out, x);
    }
    u32le(&mut out, central.len() as u32);
    u32le(&mut out, cd_offset);
    u16le(&mut out, 0);
    std::fs::write(path, out).unwrap();
}

/// The members `torch.save` writes for these tensors and this pickle.
pub fn members(pickle: Vec<u8>, tensors: &[Tensor]) -> Vec<(String, Vec<u8>, bool)> {
    let mut m = vec![
        ("archive/data.pkl".to_string(), pickle, false),
        ("archive/byteorder".to_string(), b"little".to_vec(), false),
    ];
    let mut done = std::collections::HashSet::new();
    for t in tensors {
        if done.insert(t.key.clone()) {
            m.push((format!("archive/data/{}", t.key), t.data.clone(), false));
        }
    }
    m.push(("archive/version".to_string(), b"3\n".to_vec(), false));
    m
}

/// A well-formed checkpoint of these tensors.
pub fn write(path: &Path, tensors: &[Tensor], under: Option<&str>) {
    zip(path, &members(state_dict_pickle(tensors, under), tensors));
}

/// The tensors of a safetensors file as [`Tensor`]s (f32 only), in name order.
pub fn from_safetensors(path: &Path) -> Vec<Tensor> {
    let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let t = &map[name];
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            Tensor::f32(name, i, t.dims(), &v)
        })
        .collect()
}
