//! What maas's own operators (hard swish, 2×2 max pools) share: the tract traits every
//! stateless operator implements the same way.

/// `Op` and `EvalOp` for a stateless operator of maas named `$name`, whose `eval` is its
/// inherent `run(&self, ctx, inputs)`; the caller has tract's `internal` prelude in scope.
macro_rules! stateless_op {
    ($op:ty, $name:literal) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            op_as_typed_op!();
        }

        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                self.run(ctx, inputs)
            }
        }
    };
}
pub(super) use stateless_op;
