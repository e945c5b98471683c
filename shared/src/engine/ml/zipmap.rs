//! `ZipMap` turns class probabilities into a sequence of `{label: probability}` maps, a type
//! tract and the Open Inference Protocol do not carry: here it passes the probabilities
//! through as a `[batch, classes]` tensor whose columns follow the ZipMap's class labels
//! (the classifier's label order).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::Built;

pub(super) fn zipmap(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let ints = node.get_attr_opt_slice::<i64>("classlabels_int64s")?.map(<[i64]>::len);
    let strings = node.get_attr_opt_tvec::<&str>("classlabels_strings")?.map(|s| s.len());
    let classes = ints.or(strings).filter(|&n| n > 0);
    let classes = node.expect_ok_or_else(classes, "class labels")?;
    Ok((expand(ZipMap { classes }), vec![]))
}

/// `ZipMap`: the probabilities pass through unchanged, `[batch, classes]`.
#[derive(Debug, Clone)]
struct ZipMap {
    classes: usize,
}

impl Expansion for ZipMap {
    fn name(&self) -> StaticName {
        "ZipMap".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[0].shape[1], self.classes.to_dim())?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        _prefix: &str,
        _model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        Ok(inputs.into())
    }
}
