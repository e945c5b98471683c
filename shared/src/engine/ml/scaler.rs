//! `Scaler`: `y = (x - offset) * scale`, per column or with one value for all, in FP32 whatever
//! the input's numeric type. scikit-learn's `StandardScaler` is written this way by skl2onnx's
//! defaults; tract 0.23 has no implementation. It is wired as a cast (when the input is not
//! FP32), a subtraction and a multiplication by constants, which tract's optimiser can fuse
//! with what follows.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_core::ops::math::{mul, sub};
use tract_onnx::tract_hir::internal::*;

use super::Built;

pub(super) fn scaler(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let offset = constants(node, "offset", 0.0)?;
    let scale = constants(node, "scale", 1.0)?;
    let columns = match (offset.len(), scale.len()) {
        (1, 1) => None,
        (n, 1) | (1, n) => Some(n),
        (a, b) => {
            node.expect_attr("scale", a == b, || format!("{a} values like `offset`, got {b}"))?;
            Some(a)
        }
    };
    Ok((expand(Scaler { offset, scale, columns }), vec![]))
}

/// An attribute's floats; a missing attribute is one `absent` value (no offset, no scaling).
fn constants(node: &NodeProto, name: &str, absent: f32) -> TractResult<Vec<f32>> {
    let values =
        node.get_attr_opt_slice::<f32>(name)?.map_or_else(|| vec![absent], <[f32]>::to_vec);
    node.expect_attr(name, !values.is_empty(), "at least one value")?;
    Ok(values)
}

#[derive(Debug, Clone)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
    /// The number of columns (last dimension) the attributes are written for, when either has
    /// one value per column.
    columns: Option<usize>,
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        if let Some(columns) = self.columns {
            s.given(&inputs[0].rank, move |s, rank| {
                let last = usize::try_from(rank - 1).ok().context("Scaler input of rank 0")?;
                s.equals(&inputs[0].shape[last], columns.to_dim())
            })?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let mut x = inputs[0];
        if model.outlet_fact(x)?.datum_type != f32::datum_type() {
            x = model.wire_node(format!("{prefix}.cast"), cast(f32::datum_type()), &[x])?[0];
        }
        let offset = model.add_const(format!("{prefix}.offset"), tensor1(&self.offset))?;
        let scale = model.add_const(format!("{prefix}.scale"), tensor1(&self.scale))?;
        let x = wire_with_rank_broadcast(format!("{prefix}.sub"), model, sub(), &[x, offset])?[0];
        wire_with_rank_broadcast(prefix, model, mul(), &[x, scale])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::{tvec, InferenceModelExt};
    use tract_onnx::tract_hir::infer::InferenceModel;

    /// Runs a one-node `Scaler` model over `x` ([rows, columns]) and returns its output.
    fn run(scaler: Scaler, x: Tensor) -> Vec<f32> {
        let mut model = InferenceModel::default();
        let input =
            model.add_source("x", InferenceFact::dt_shape(x.datum_type(), x.shape())).unwrap();
        let y = model.wire_node("scaler", expand(scaler), &[input]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let out = plan.run(tvec!(x.into())).unwrap();
        out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    #[test]
    fn columns_are_offset_then_scaled() {
        let scaler = Scaler { offset: vec![1.0, -2.0], scale: vec![0.5, 3.0], columns: Some(2) };
        let x = tensor2(&[[3.0f32, 0.0], [1.0, -2.0]]);
        assert_eq!(run(scaler, x), [1.0, 6.0, 0.0, 0.0]);
    }

    #[test]
    fn one_value_applies_to_every_column_and_integers_become_floats() {
        let scaler = Scaler { offset: vec![10.0], scale: vec![0.25], columns: None };
        let x = tensor2(&[[14i64, 18, 10]]);
        assert_eq!(run(scaler, x), [1.0, 2.0, 0.0]);
    }
}
