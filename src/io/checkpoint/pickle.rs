//! A pickle reader for PyTorch checkpoints that runs nothing and cannot be made to allocate
//! more than a small multiple of its input.
//!
//! Python's unpickler calls whatever a pickle names. This one knows the few callables a state
//! dict is built from (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`) and turns every other global into an inert placeholder: calling or
//! building it yields another placeholder, so an `os.system` in a pickle does nothing. Containers
//! live in an arena and values refer to them by index, so the memo shares instead of copying
//! (a pickle that fetches the same list a million times costs a million indices), cycles are
//! harmless, and nothing is ever dropped or walked recursively (a million-deep nesting is a
//! million arena entries, not a million stack frames). Every length is checked against the
//! bytes that remain before anything is allocated, and the number of values is capped.
use std::collections::HashMap;
use std::rc::Rc;

/// Most values (stack items, container elements, memo entries) one pickle may make: a state
/// dict of a few thousand tensors needs some tens of thousands.
pub const MAX_ITEMS: usize = 4_000_000;

/// Most dimensions a tensor may have (PyTorch's own limit is 64; weights have at most 4).
pub const MAX_DIMS: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Bytes (their content is never needed) or an integer too large for `i64`.
    Blob,
    Global(Rc<str>, Rc<str>),
    /// A container or a tensor in the arena.
    Ref(usize),
    /// What calling, building or instantiating anything unknown gives.
    Opaque,
}

/// A tensor's storage as the pickle names it: `('storage', torch.FloatStorage, key, location,
/// numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// The storage type's name (`FloatStorage`, `HalfStorage`, …).
    pub kind: Rc<str>,
    pub key: Rc<str>,
    pub numel: u64,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug)]
pub enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// What [`parse`] read: the top object and the arena its references point into.
pub struct Pickle {
    pub top: Value,
    pub nodes: Vec<Node>,
}

impl Pickle {
    pub fn node(&self, v: &Value) -> Option<&Node> {
        match v {
            Value::Ref(i) => self.nodes.get(*i),
            _ => None,
        }
    }

    pub fn dict(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match self.node(v)? {
            Node::Dict(d) => Some(d),
            _ => None,
        }
    }

    pub fn tensor(&self, v: &Value) -> Option<&TensorRef> {
        match self.node(v)? {
            Node::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

enum Item {
    Mark,
    V(Value),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
    nodes: Vec<Node>,
    items: usize,
}

type R<T> = std::result::Result<T, String>;

/// Reads a pickle (protocols 2 to 5, as `torch.save` writes them).
pub fn parse(data: &[u8]) -> R<Pickle> {
    let mut r = Reader {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        nodes: Vec::new(),
        items: 0,
    };
    loop {
        let at = r.pos;
        let op = r
            .byte()
            .map_err(|_| "pickle ends without STOP".to_string())?;
        if op == b'.' {
            let top = r.pop()?;
            return Ok(Pickle {
                top,
                nodes: r.nodes,
            });
        }
        r.op(op)
            .map_err(|e| format!("pickle byte {at} (opcode 0x{op:02x}): {e}"))?;
    }
}

impl Reader<'_> {
    fn count(&mut self, n: usize) -> R<()> {
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return Err(format!("more than {MAX_ITEMS} objects"));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> R<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "declares {n} bytes where {} remain",
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "short read")?))
    }

    fn len(&mut self, n: u64) -> R<usize> {
        usize::try_from(n).map_err(|_| format!("length {n} too large"))
    }

    fn text(&mut self, n: usize) -> R<Value> {
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        Ok(Value::Str(s.into()))
    }

    /// A `GLOBAL` argument: bytes up to a newline.
    fn line(&mut self) -> R<Rc<str>> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("GLOBAL without a newline")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s.into())
    }

    fn push(&mut self, v: Value) -> R<()> {
        self.count(1)?;
        self.stack.push(Item::V(v));
        Ok(())
    }

    fn node(&mut self, n: Node) -> R<Value> {
        self.count(1)?;
        self.nodes.push(n);
        Ok(Value::Ref(self.nodes.len() - 1))
    }

    fn pop(&mut self) -> R<Value> {
        match self.stack.pop() {
            Some(Item::V(v)) => Ok(v),
            Some(Item::Mark) => Err("a MARK where a value was expected".into()),
            None => Err("stack underflow".into()),
        }
    }

    fn top(&self) -> R<&Value> {
        match self.stack.last() {
            Some(Item::V(v)) => Ok(v),
            _ => Err("no value on the stack".into()),
        }
    }

    /// The values above the topmost MARK, which is removed.
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or("no MARK on the stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        items
            .into_iter()
            .map(|i| match i {
                Item::V(v) => Ok(v),
                Item::Mark => Err("nested MARK".to_string()),
            })
            .collect()
    }

    fn op(&mut self, op: u8) -> R<()> {
        match op {
            0x80 => {
                let proto = self.byte()?;
                if !(2..=5).contains(&proto) {
                    return Err(format!("pickle protocol {proto} is not supported"));
                }
            }
            0x95 => {
                // FRAME: a hint of the next frame's length, nothing to do.
                self.u64()?;
            }
            b'(' => {
                self.count(1)?;
                self.stack.push(Item::Mark);
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Value::Int(v as i64))?
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Value::Int(v as i64))?
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v as i64))?
            }
            0x8a => {
                let n = self.byte()? as usize;
                let v = long(self.take(n)?);
                self.push(v)?
            }
            0x8b => {
                let n = self.u32()? as usize;
                let v = long(self.take(n)?);
                self.push(v)?
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes(b.try_into().map_err(|_| "short read")?);
                self.push(Value::Float(v))?
            }
            _ => return self.op_strings(op),
        }
        Ok(())
    }

    fn op_strings(&mut self, op: u8) -> R<()> {
        match op {
            b'X' => {
                let n = self.u32()? as usize;
                let v = self.text(n)?;
                self.push(v)
            }
            0x8c | b'U' => {
                let n = self.byte()? as usize;
                let v = self.text(n)?;
                self.push(v)
            }
            0x8d => {
                let n = self.u64()?;
                let n = self.len(n)?;
                let v = self.text(n)?;
                self.push(v)
            }
            b'T' => {
                let n = self.u32()? as usize;
                let v = self.text(n)?;
                self.push(v)
            }
            b'B' => {
                let n = self.u32()? as usize;
                self.take(n)?;
                self.push(Value::Blob)
            }
            b'C' => {
                let n = self.byte()? as usize;
                self.take(n)?;
                self.push(Value::Blob)
            }
            0x8e | 0x96 => {
                let n = self.u64()?;
                let n = self.len(n)?;
                self.take(n)?;
                self.push(Value::Blob)
            }
            _ => self.op_containers(op),
        }
    }

    fn op_containers(&mut self, op: u8) -> R<()> {
        match op {
            b')' => {
                let v = self.node(Node::Tuple(Vec::new()))?;
                self.push(v)
            }
            b't' => {
                let items = self.pop_mark()?;
                let v = self.node(Node::Tuple(items))?;
                self.push(v)
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = (0..n).map(|_| self.pop()).collect::<R<Vec<_>>>()?;
                items.reverse();
                let v = self.node(Node::Tuple(items))?;
                self.push(v)
            }
            b']' | 0x8f => {
                let v = self.node(Node::List(Vec::new()))?;
                self.push(v)
            }
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                let v = self.node(Node::List(items))?;
                self.push(v)
            }
            b'}' => {
                let v = self.node(Node::Dict(Vec::new()))?;
                self.push(v)
            }
            b'd' => {
                let items = self.pop_mark()?;
                let v = self.node(Node::Dict(pairs(items)?))?;
                self.push(v)
            }
            b'a' => {
                let v = self.pop()?;
                self.extend(vec![v])
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend(items)
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(pairs(items)?)
            }
            _ => self.op_objects(op),
        }
    }

    fn op_objects(&mut self, op: u8) -> R<()> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(module, name))
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                    _ => Err("STACK_GLOBAL wants two strings".into()),
                }
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = self.call(&func, &args)?;
                self.push(v)
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.call(&cls, &args)?;
                self.push(v)
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.call(&cls, &args)?;
                self.push(v)
            }
            b'b' => {
                // BUILD sets an object's state (an OrderedDict's `_metadata`, say): kept as is.
                self.pop()?;
                self.top()?;
                Ok(())
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent(&pid)?;
                self.push(v)
            }
            _ => self.op_memo(op),
        }
    }

    fn op_memo(&mut self, op: u8) -> R<()> {
        match op {
            b'q' => {
                let i = self.byte()? as u32;
                self.put(i)
            }
            b'r' => {
                let i = self.u32()?;
                self.put(i)
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                self.put(i)
            }
            b'h' => {
                let i = self.byte()? as u32;
                self.get(i)
            }
            b'j' => {
                let i = self.u32()?;
                self.get(i)
            }
            b'0' => self.pop().map(drop),
            b'1' => self.pop_mark().map(drop),
            b'2' => {
                let v = self.top()?.clone();
                self.push(v)
            }
            _ => Err(
                "unsupported opcode (protocol 0/1 text opcodes, extensions and \
                      out-of-band buffers do not occur in PyTorch checkpoints)"
                    .into(),
            ),
        }
    }

    fn put(&mut self, i: u32) -> R<()> {
        let v = self.top()?.clone();
        self.count(1)?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn get(&mut self, i: u32) -> R<()> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or(format!("memo {i} was never set"))?;
        self.push(v)
    }

    fn extend(&mut self, items: Vec<Value>) -> R<()> {
        self.count(items.len())?;
        let target = self.top()?.clone();
        match target {
            Value::Ref(i) => match self.nodes.get_mut(i) {
                Some(Node::List(l)) => {
                    l.extend(items);
                    Ok(())
                }
                _ => Err("APPEND to something that is not a list".into()),
            },
            // Appending to an unknown object's placeholder: nothing to keep.
            Value::Opaque => Ok(()),
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> R<()> {
        self.count(items.len())?;
        let target = self.top()?.clone();
        match target {
            Value::Ref(i) => match self.nodes.get_mut(i) {
                Some(Node::Dict(d)) => {
                    d.extend(items);
                    Ok(())
                }
                _ => Err("SETITEM on something that is not a dict".into()),
            },
            Value::Opaque => Ok(()),
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn tuple(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Ref(i) => match self.nodes.get(*i)? {
                Node::Tuple(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// What calling `func(*args)` gives, for the callables a state dict needs; a placeholder
    /// for anything else (whose arguments are not even looked at).
    fn call(&mut self, func: &Value, args: &Value) -> R<Value> {
        let Value::Global(module, name) = func else {
            return Ok(Value::Opaque);
        };
        match (&**module, &**name) {
            ("collections", "OrderedDict") => self.node(Node::Dict(Vec::new())),
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let t = self.rebuild_tensor(args)?;
                self.node(Node::Tensor(t))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let first = self.tuple(args).and_then(|a| a.first());
                match first {
                    Some(v) if self.tensor_at(v) => Ok(v.clone()),
                    _ => Err("_rebuild_parameter of something that is not a tensor".into()),
                }
            }
            _ => Ok(Value::Opaque),
        }
    }

    fn tensor_at(&self, v: &Value) -> bool {
        matches!(v, Value::Ref(i) if matches!(self.nodes.get(*i), Some(Node::Tensor(_))))
    }

    fn rebuild_tensor(&self, args: &Value) -> R<TensorRef> {
        let bad = || "malformed _rebuild_tensor_v2 arguments".to_string();
        let Some([storage, offset, shape, stride, ..]) = self.tuple(args) else {
            return Err(bad());
        };
        let storage = match storage {
            Value::Ref(i) => match self.nodes.get(*i) {
                Some(Node::Storage(s)) => s.clone(),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        let ints = |v: &Value| -> R<Vec<u64>> {
            let t = self.tuple(v).ok_or_else(bad)?;
            if t.len() > MAX_DIMS {
                return Err(format!("a tensor with {} dimensions", t.len()));
            }
            t.iter()
                .map(|x| match x {
                    Value::Int(i) if *i >= 0 => Ok(*i as u64),
                    _ => Err(bad()),
                })
                .collect()
        };
        let offset = match offset {
            Value::Int(i) if *i >= 0 => *i as u64,
            _ => return Err(bad()),
        };
        let (shape, stride) = (ints(shape)?, ints(stride)?);
        if shape.len() != stride.len() {
            return Err(format!(
                "a tensor's size {shape:?} and stride {stride:?} disagree"
            ));
        }
        Ok(TensorRef {
            storage,
            offset,
            shape,
            stride,
        })
    }

    /// `BINPERSID`: PyTorch's reference to a storage in the archive.
    fn persistent(&mut self, pid: &Value) -> R<Value> {
        let bad = || "malformed storage reference".to_string();
        let t = self.tuple(pid).ok_or_else(bad)?;
        let storage = match t {
            [Value::Str(tag), Value::Global(_, kind), Value::Str(key), _, Value::Int(n)]
                if &**tag == "storage" && *n >= 0 =>
            {
                StorageRef {
                    kind: kind.clone(),
                    key: key.clone(),
                    numel: *n as u64,
                }
            }
            _ => return Err(bad()),
        };
        self.node(Node::Storage(storage))
    }
}

/// Python's `long` from little-endian two's complement bytes.
fn long(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        return Value::Blob;
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 8];
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_and_shared_memo() {
        assert_eq!(long(&[0xff]), Value::Int(-1));
        assert_eq!(long(&[0x00, 0x01]), Value::Int(256));
        // [] memoised, then a list holding it 1000 times: 1000 references, one list.
        let mut p = vec![0x80, 2, b']', b'q', 0, b']', b'('];
        for _ in 0..1000 {
            p.extend([b'h', 0]);
        }
        p.extend([b'e', b'.']);
        let out = parse(&p).unwrap();
        assert_eq!(out.nodes.len(), 2);
        match &out.nodes[1] {
            Node::List(l) => assert!(l.iter().all(|v| *v == Value::Ref(0)) && l.len() == 1000),
            n => panic!("{n:?}"),
        }
    }

    #[test]
    fn unknown_callables_do_nothing() {
        // os.system('echo hi') as a pickle: a placeholder, not a process.
        let mut p = vec![0x80, 2, b'c'];
        p.extend(b"os\nsystem\n");
        p.extend([b'X', 7, 0, 0, 0]);
        p.extend(b"echo hi");
        p.extend([0x85, b'R', b'.']);
        assert_eq!(parse(&p).unwrap().top, Value::Opaque);
    }

    #[test]
    fn deep_nesting_and_lies_are_errors_or_flat() {
        // A million nested one-element lists: flat in the arena, no recursion anywhere.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n([b']', b'('], 1).flatten());
        for _ in 0..1_000_000 {
            p.extend([b'(']);
        }
        for _ in 0..1_000_000 {
            p.extend([b'l']);
        }
        p.push(b'.');
        // Either read (flat) or refused: never a stack overflow.
        let _ = parse(&p);
        // A string that claims 4 GB.
        let e = parse(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'.'])
            .err()
            .unwrap();
        assert!(e.contains("declares 4294967295 bytes"), "{e}");
        let e = parse(&[0x80, 2, b'h', 7, b'.']).err().unwrap();
        assert!(e.contains("memo 7 was never set"), "{e}");
    }
}
