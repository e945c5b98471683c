//! Folding `If` nodes whose condition is constant, before tract sees the graph.

use std::collections::HashMap;

use tract_onnx::pb;
use tract_onnx::prelude::InferenceModelExt;

use super::signature::signature_of;
use super::translate::{set_input_facts, Concrete};
use super::{engine_problem, onnx};
use crate::error::Error;

/// The model with every top-level `If` folded whose condition is a constant, or which
/// tract's analysis of the graph under the input facts finds constant (PyTorch's legacy
/// exporter writes `squeeze` of a dynamic axis as `If(shape[-1] == 1, Squeeze, Identity)`,
/// constant once shapes are; Silero VAD picks its 8 or 16 kHz network by `If(sr == 16000)`,
/// constant once the sample rate is). Repeats while inlined branches bring new foldable `If`s.
pub(super) fn fold_ifs(
    proto: &pb::ModelProto,
    concrete: Option<&Concrete>,
) -> Result<pb::ModelProto, Error> {
    let mut folded: Option<pb::ModelProto> = None;
    loop {
        let current = folded.as_ref().unwrap_or(proto);
        let known = analysed_conditions(current, concrete);
        match fold_constant_ifs(current, &known) {
            Some(next) => folded = Some(next),
            None => break,
        }
    }
    folded.ok_or_else(|| engine_problem("the graph has no `If` with a constant condition"))
}

/// The conditions of top-level `If` nodes whose value tract's analysis finds, by the name
/// of the tensor that holds them. Analysis goes as far as it can; what it cannot settle is
/// left out.
fn analysed_conditions(
    proto: &pb::ModelProto,
    concrete: Option<&Concrete>,
) -> HashMap<String, bool> {
    use tract_onnx::tract_hir::infer::Factoid;
    let mut known = HashMap::new();
    let Some(graph) = proto.graph.as_ref() else { return known };
    let conditions = graph.node.iter().filter(|n| n.op_type == "If" && n.domain.is_empty());
    let conditions: Vec<&String> = conditions.filter_map(|n| n.input.first()).collect();
    if conditions.is_empty() {
        return known;
    }
    let Ok(signature) = signature_of(proto) else { return known };
    let Ok(parsed) = onnx().with_ignore_value_info(true).parse(proto, None) else { return known };
    let mut model = parsed.model;
    if set_input_facts(&mut model, proto, &signature, concrete).is_err() {
        return known;
    }
    let _ = model.analyse(true);
    for name in conditions {
        let fact = parsed.outlets_by_name.get(name).and_then(|&o| model.outlet_fact(o).ok());
        let Some(value) = fact.and_then(|f| f.value.concretize()) else { continue };
        let Ok(value) = value.cast_to::<bool>() else { continue };
        if let Ok(&[condition]) = value.try_as_plain_ram().and_then(|v| v.as_slice::<bool>()) {
            known.insert(name.clone(), condition);
        }
    }
    known
}

/// A boolean scalar tensor's value.
fn scalar_bool(tensor: &pb::TensorProto) -> Option<bool> {
    const BOOL: i32 = 9;
    if tensor.data_type != BOOL || tensor.dims.iter().product::<i64>() != 1 {
        return None;
    }
    tensor.int32_data.first().map(|&v| v != 0).or_else(|| tensor.raw_data.first().map(|&b| b != 0))
}

/// The model with every top-level `If` whose condition is a constant (an initializer, a
/// `Constant` node, or in `known`) replaced by the nodes of the branch it always takes;
/// `None` when there is no such `If`. tract analyses both branches of an `If` and refuses
/// branches whose shapes differ even when the condition can never select one of them.
fn fold_constant_ifs(
    proto: &pb::ModelProto,
    known: &HashMap<String, bool>,
) -> Option<pb::ModelProto> {
    let mut model = proto.clone();
    let graph = model.graph.as_mut()?;
    let mut folded = false;
    loop {
        let initializers =
            graph.initializer.iter().filter_map(|t| Some((t.name.clone(), scalar_bool(t)?)));
        let constant_nodes =
            graph.node.iter().filter(|n| n.op_type == "Constant").filter_map(|n| {
                let value = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
                Some((n.output.first()?.clone(), scalar_bool(value)?))
            });
        let known = known.iter().map(|(name, &value)| (name.clone(), value));
        let constants: HashMap<String, bool> =
            initializers.chain(constant_nodes).chain(known).collect();
        let Some(position) = graph.node.iter().position(|n| {
            n.op_type == "If"
                && n.domain.is_empty()
                && n.input.first().is_some_and(|c| constants.contains_key(c))
        }) else {
            break;
        };
        let node = graph.node.remove(position);
        let taken = if constants[&node.input[0]] { "then_branch" } else { "else_branch" };
        let branch = node.attribute.iter().find(|a| a.name == taken)?.g.clone()?;
        // The branch's outputs become the If's outputs through Identity nodes.
        let renames = branch.output.iter().zip(&node.output).map(|(from, to)| pb::NodeProto {
            name: format!("{}.{to}", node.name),
            op_type: "Identity".to_owned(),
            input: vec![from.name.clone()],
            output: vec![to.clone()],
            ..Default::default()
        });
        let inlined: Vec<pb::NodeProto> = branch.node.into_iter().chain(renames).collect();
        graph.initializer.extend(branch.initializer);
        graph.node.splice(position..position, inlined);
        folded = true;
    }
    folded.then_some(model)
}
