//! Decoding an ONNX file while it downloads, so that a cold start does not decode the whole
//! protobuf after the last byte arrives.
//!
//! The bytes of a model file come in file order (the fetch hashes them in that order). Its
//! weights are the graph's initializers (`ModelProto.graph`, field 7; `GraphProto.initializer`,
//! field 5), almost all of the file: each is decoded on its own thread as soon as its last
//! byte is there. Everything else (the nodes, the inputs, the metadata) is kept as it came,
//! minus the initializers, and decoded at the end: a few KiB. Decoding the fields apart gives
//! the same message as decoding the whole file, since protobuf merges a message's fields in
//! the order they come.
//!
//! Nothing decoded is used before the fetch has checked the file against its manifest: the
//! caller hands the result to the engine only then ([`super::Model::load_decoded`]), and loads
//! from the file (the usual path, with its usual errors) whenever decoding here failed.

use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::{Buf, Bytes, BytesMut};
use prost::encoding::{decode_varint, encode_varint, WireType};
use prost::Message;
use tract_onnx::pb;

use super::budget::{contained, measured_net};
use super::{Resources, Settings};
use crate::error::Error;

/// `ModelProto.graph`.
const GRAPH: u64 = 7;
/// `GraphProto.initializer`.
const INITIALIZER: u64 = 5;

/// An ONNX file decoded as it arrived, with the heap bytes the decoding left allocated.
pub struct Decoded {
    pub(super) proto: pb::ModelProto,
    pub(super) held: isize,
    pub(super) file_bytes: u64,
}

/// Decodes a model file fed to it in order, on a thread of its own.
pub struct StreamDecoder {
    parts: Option<mpsc::Sender<Bytes>>,
    thread: Option<JoinHandle<Result<Decoded, Error>>>,
}

impl StreamDecoder {
    /// Starts a decoder for a file of `file_bytes` bytes (the manifest's size), within the
    /// memory limits `settings` give a load of that file.
    pub fn start(settings: &Settings, file_bytes: u64) -> Self {
        let cap = Resources::cap(settings, file_bytes);
        let (sender, parts) = mpsc::channel::<Bytes>();
        let spawned = std::thread::Builder::new()
            .name("maas-decode".to_owned())
            .spawn(move || decode(&parts, cap, file_bytes));
        match spawned {
            Ok(thread) => Self { parts: Some(sender), thread: Some(thread) },
            Err(error) => {
                tracing::warn!(%error, "no decoding thread: the model is decoded after its fetch");
                Self { parts: None, thread: None }
            }
        }
    }

    /// The next bytes of the file.
    pub fn push(&self, part: Bytes) {
        if let Some(parts) = &self.parts {
            // A decoder that stopped on an error has nothing more to do with the bytes.
            let _ = parts.send(part);
        }
    }

    /// Waits for the decoding of everything pushed, which must be the whole file. (A decoder
    /// dropped instead, after a failed fetch, ends its thread without being waited for.)
    pub fn finish(self) -> Result<Decoded, Error> {
        let Self { parts, thread } = self;
        drop(parts);
        let thread = thread.ok_or_else(|| not_decoded("no decoding thread"))?;
        thread.join().map_err(|_| not_decoded("the decoding thread failed"))?
    }
}

fn not_decoded(problem: &str) -> Error {
    super::engine_problem(format!("cannot decode the ONNX file as it arrives: {problem}"))
}

/// The decoding thread: feeds every part to a [`Scanner`], within the load's allocation cap.
fn decode(parts: &mpsc::Receiver<Bytes>, cap: u64, file_bytes: u64) -> Result<Decoded, Error> {
    contained(cap, "decoding the model file", || {
        // What the decoding keeps: measured around the scanner's work only, since the parts
        // were allocated on other threads, and freeing them here would count against it.
        let mut held = 0;
        let mut scanner = Scanner::new(file_bytes);
        for part in parts {
            let (fed, net) = measured_net(|| scanner.feed(&part));
            held += net;
            fed?;
        }
        let (proto, net) = measured_net(|| scanner.finish());
        Ok(Decoded { proto: proto?, held: held + net, file_bytes })
    })
}

/// A length-delimited graph field being read: the bytes it still holds and its fields
/// other than initializers.
struct OpenGraph {
    remaining: u64,
    fields: Vec<u8>,
}

/// The protobuf reader: splits a `ModelProto` as its bytes come into initializers (decoded at
/// once) and the rest (kept encoded).
struct Scanner {
    /// Bytes received and not yet consumed.
    pending: BytesMut,
    /// Bytes the file still has to bring.
    expected: u64,
    /// The model's fields, the graphs among them without their initializers.
    skeleton: Vec<u8>,
    graph: Option<OpenGraph>,
    initializers: Vec<pb::TensorProto>,
}

/// One field at the front of the pending bytes: its number, its wire type, the length of its
/// key (and length prefix) and of its value.
struct Field {
    number: u64,
    wire_type: WireType,
    header: usize,
    value: usize,
}

impl Scanner {
    fn new(file_bytes: u64) -> Self {
        Self {
            pending: BytesMut::new(),
            expected: file_bytes,
            skeleton: Vec::new(),
            graph: None,
            initializers: Vec::new(),
        }
    }

    fn feed(&mut self, part: &[u8]) -> Result<(), Error> {
        self.expected = self
            .expected
            .checked_sub(part.len() as u64)
            .ok_or_else(|| not_decoded("more bytes than the file's size"))?;
        self.pending.extend_from_slice(part);
        while self.step()? {}
        Ok(())
    }

    /// Consumes one field (or closes a graph) when its bytes are all there: false when more
    /// bytes are needed.
    fn step(&mut self) -> Result<bool, Error> {
        if let Some(graph) = self.graph.take_if(|graph| graph.remaining == 0) {
            encode_varint(GRAPH << 3 | WireType::LengthDelimited as u64, &mut self.skeleton);
            encode_varint(graph.fields.len() as u64, &mut self.skeleton);
            self.skeleton.extend_from_slice(&graph.fields);
            return Ok(true);
        }
        let Some(field) = self.peek()? else { return Ok(false) };
        let in_graph = self.graph.is_some();
        let opens_graph = !in_graph && field.number == GRAPH;
        if opens_graph && field.wire_type == WireType::LengthDelimited {
            self.pending.advance(field.header);
            self.graph = Some(OpenGraph { remaining: field.value as u64, fields: Vec::new() });
            return Ok(true);
        }
        let size = field.header + field.value;
        if self.pending.len() < size {
            // The rest of the field is on its way: room for it at once, not by doublings.
            let missing = (size - self.pending.len()) as u64;
            self.pending.reserve(usize::try_from(missing.min(self.expected)).unwrap_or(0));
            return Ok(false);
        }
        let bytes = self.pending.split_to(size).freeze();
        let Some(graph) = &mut self.graph else {
            self.skeleton.extend_from_slice(&bytes);
            return Ok(true);
        };
        graph.remaining = graph
            .remaining
            .checked_sub(size as u64)
            .ok_or_else(|| not_decoded("a field runs past the end of its graph"))?;
        if field.number == INITIALIZER && field.wire_type == WireType::LengthDelimited {
            let tensor = pb::TensorProto::decode(bytes.slice(field.header..))
                .map_err(|e| not_decoded(&format!("an initializer: {e}")))?;
            self.initializers.push(tensor);
        } else {
            graph.fields.extend_from_slice(&bytes);
        }
        Ok(true)
    }

    /// The key and length of the field at the front of the pending bytes, `None` until they
    /// have arrived.
    fn peek(&self) -> Result<Option<Field>, Error> {
        let mut front = &self.pending[..];
        let Some(key) = complete_varint(&mut front)? else { return Ok(None) };
        let wire_type = WireType::try_from(key & 7)
            .map_err(|_| not_decoded(&format!("wire type {} in field key {key}", key & 7)))?;
        let value = match wire_type {
            WireType::Varint => {
                let mut rest = front;
                match complete_varint(&mut rest)? {
                    Some(_) => front.len() - rest.len(),
                    None => return Ok(None),
                }
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => match complete_varint(&mut front)? {
                Some(length) => usize::try_from(length)
                    .ok()
                    .filter(|&length| length as u64 <= self.expected + self.pending.len() as u64)
                    .ok_or_else(|| not_decoded("a field longer than the file"))?,
                None => return Ok(None),
            },
            WireType::StartGroup | WireType::EndGroup => {
                return Err(not_decoded("a protobuf group (ONNX has none)"));
            }
        };
        let header = self.pending.len() - front.len();
        Ok(Some(Field { number: key >> 3, wire_type, header, value }))
    }

    /// The whole model, once every byte was fed.
    fn finish(self) -> Result<pb::ModelProto, Error> {
        if self.expected != 0 || !self.pending.is_empty() || self.graph.is_some() {
            return Err(not_decoded("the file ends inside a field"));
        }
        let mut proto = pb::ModelProto::decode(&self.skeleton[..])
            .map_err(|e| not_decoded(&format!("the model: {e}")))?;
        if !self.initializers.is_empty() {
            proto.graph.get_or_insert_with(Default::default).initializer = self.initializers;
        }
        Ok(proto)
    }
}

/// A varint read from the front of `bytes` when all of it is there (advancing past it),
/// `None` when its end has not arrived.
fn complete_varint(bytes: &mut &[u8]) -> Result<Option<u64>, Error> {
    let Some(end) = bytes.iter().take(10).position(|byte| byte & 0x80 == 0) else {
        return if bytes.len() >= 10 {
            Err(not_decoded("a varint over 10 bytes"))
        } else {
            Ok(None)
        };
    };
    let mut varint = &bytes[..=end];
    let value = decode_varint(&mut varint).map_err(|e| not_decoded(&e.to_string()))?;
    *bytes = &bytes[end + 1..];
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Loader, Planning};

    const MLP: &[u8] = include_bytes!("../../../tests/zoo/torch_mlp_legacy.onnx");
    const ATTENTION: &[u8] = include_bytes!("../../../tests/zoo/torch_attention_dynamo.onnx");
    const FOREST: &[u8] = include_bytes!("../../../scripts/example-store/models/iris/1/model.onnx");

    /// The file fed to a decoder in parts of `part` bytes.
    fn streamed(file: &[u8], part: usize) -> Result<Decoded, Error> {
        let decoder = StreamDecoder::start(&Settings::default(), file.len() as u64);
        for chunk in file.chunks(part) {
            decoder.push(Bytes::copy_from_slice(chunk));
        }
        decoder.finish()
    }

    /// A model whose graph comes in two pieces, with initializers of each kind of data, and
    /// fields of the model after the graph: what prost makes of the whole is the reference.
    fn merged_model() -> Vec<u8> {
        let tensor = |name: &str, raw: bool| pb::TensorProto {
            name: name.to_owned(),
            dims: vec![2, 3],
            data_type: 1,
            raw_data: if raw { (0..24).collect() } else { Vec::new() },
            float_data: if raw { Vec::new() } else { vec![1.5; 6] },
            ..Default::default()
        };
        let node = |name: &str| pb::NodeProto {
            name: name.to_owned(),
            op_type: "Add".to_owned(),
            input: vec!["a".to_owned(), "b".to_owned()],
            output: vec![name.to_owned()],
            ..Default::default()
        };
        let first = pb::ModelProto {
            ir_version: 8,
            producer_name: "maas".to_owned(),
            graph: Some(pb::GraphProto {
                name: "g".to_owned(),
                node: vec![node("n1")],
                initializer: vec![tensor("a", true), tensor("b", false)],
                ..Default::default()
            }),
            doc_string: "after the graph".to_owned(),
            ..Default::default()
        };
        let second = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![node("n2")],
                initializer: vec![tensor("c", true)],
                ..Default::default()
            }),
            model_version: 3,
            ..Default::default()
        };
        [first.encode_to_vec(), second.encode_to_vec()].concat()
    }

    #[test]
    fn a_file_decoded_as_it_arrives_is_the_file_decoded_whole() {
        let merged = merged_model();
        for (what, file) in
            [("merged", &merged[..]), ("mlp", MLP), ("attention", ATTENTION), ("forest", FOREST)]
        {
            let whole = pb::ModelProto::decode(file).unwrap();
            let initializers = whole.graph.as_ref().unwrap().initializer.len();
            assert!(initializers > 0 || what == "forest", "{what}");
            for part in [1, 2, 7, 100, 4096, file.len()] {
                let decoded = streamed(file, part).unwrap();
                assert!(decoded.proto == whole, "{what} in parts of {part}");
                assert!(decoded.held > 0, "{what}: {}", decoded.held);
            }
        }
        let decoded = streamed(&merged, 5).unwrap().proto;
        let graph = decoded.graph.unwrap();
        let names = |items: Vec<String>| items.join(",");
        assert_eq!(names(graph.initializer.into_iter().map(|t| t.name).collect()), "a,b,c");
        assert_eq!(names(graph.node.into_iter().map(|n| n.name).collect()), "n1,n2");
        assert_eq!((decoded.doc_string.as_str(), decoded.model_version), ("after the graph", 3));
    }

    #[test]
    fn a_file_cut_short_or_too_long_or_malformed_is_not_decoded() {
        let cases: [(&str, Vec<u8>); 4] = [
            ("cut in an initializer", MLP[..MLP.len() / 2].to_vec()),
            ("cut in the last field", MLP[..MLP.len() - 1].to_vec()),
            ("a group", [MLP, &[0x0b]].concat()),
            ("a length past the end", [MLP, &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat()),
        ];
        for (what, file) in cases {
            // The decoder is told the size of what it gets: the file ends where it ends.
            let err = streamed(&file, 1000).err().unwrap_or_else(|| panic!("{what} decoded"));
            assert!(err.to_string().contains("cannot decode"), "{what}: {err}");
        }
        let decoder = StreamDecoder::start(&Settings::default(), 10);
        decoder.push(Bytes::from_static(&[0; 11]));
        assert!(decoder.finish().is_err(), "more bytes than the size");
    }

    /// Differential check on damaged files: whatever the decoder accepts, prost decodes whole
    /// to the same model (what it refuses, loading the file reports).
    #[test]
    fn a_damaged_file_decoded_as_it_arrives_is_refused_or_decoded_as_prost_would() {
        let mut random = crate::test_random();
        let mut next = move |below: usize| random(below as u64) as usize;
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..3000 {
            let mut file = [MLP, ATTENTION, FOREST][round % 3].to_vec();
            for _ in 0..=next(4) {
                let at = next(file.len());
                match next(3) {
                    0 => file[at] = next(256) as u8,
                    1 => file.truncate(at.max(1)),
                    _ => file.insert(at, next(256) as u8),
                }
            }
            let whole = pb::ModelProto::decode(&file[..]);
            match streamed(&file, 1 + next(5000)) {
                Ok(decoded) => {
                    accepted += 1;
                    assert!(whole.ok() == Some(decoded.proto), "round {round}");
                }
                Err(_) => refused += 1,
            }
        }
        // Both outcomes were exercised.
        assert!(accepted > 100 && refused > 100, "{accepted} accepted, {refused} refused");
    }

    #[test]
    fn a_decoded_file_loads_as_the_file_does_and_weighs_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for (what, file, loader, planning) in [
            ("mlp", MLP, Loader::Plain, Planning::Symbolic),
            ("attention", ATTENTION, Loader::IgnoreValueInfo, Planning::PerShape),
        ] {
            let path = dir.path().join(what);
            std::fs::write(&path, file).unwrap();
            let settings = Settings::default();
            // The first load in a process also sets up what the engine keeps for all models.
            let load = || super::super::Model::load_path(&path, loader, planning, &settings);
            let from_file = load().and_then(|_| load()).unwrap();
            let decoded = streamed(file, 333).unwrap();
            let model = super::super::Model::load_decoded(decoded, loader, planning, &settings);
            let model = model.unwrap();
            assert_eq!(model.signature(), from_file.signature(), "{what}");
            let (a, b) = (model.memory_bytes() as f64, from_file.memory_bytes() as f64);
            assert!((a / b - 1.0).abs() < 0.1, "{what}: {a} vs {b} bytes");
        }
    }
}
