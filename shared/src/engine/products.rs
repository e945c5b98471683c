//! Many small matrix products of two computed tensors, as an attention block runs them: a
//! query by a key and the attention weights by a value, per batch row and head (the zoo's
//! block: 32 products of 6 × 8 by 8 × 6 at batch 8). tract computes each with its kernels
//! for large matrices, packing both operands first: the products and their packing were
//! half of the block's run (`scripts/benchmarks.md`, "Small products of two activations").
//! [`replace`] puts [`SmallProducts`] in place of such a product in the decluttered graph:
//! each product is multiplied out in plain loops on its operands as they lie (as dot
//! products when both run along the depth, a query by a key), or with its right operand
//! gathered into rows first. Where the sizes are known only at run time (a sequence length), a run
//! whose products turn out larger multiplies them by `matrixmultiply` (through `ndarray`)
//! on the operands as they lie, on one thread.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::ops::{stateless_op, Scales};

/// The largest product (rows × depth × columns) multiplied in plain loops, and the largest
/// of known sizes [`replace`] takes from tract: above it packed kernels pay for their
/// packing.
const MAX_PRODUCT: usize = 16 * 16 * 16;

/// Where an axis of a product sits: its position in each operand and in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    a: Option<usize>,
    b: Option<usize>,
    c: Option<usize>,
}

/// `c[.., m, n] = sum over k of a[.., m, k] * b[.., k, n]` for every index of the batch axes
/// `..`, in whatever order each tensor holds its axes (an [`EinSum`] of that form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SmallProducts {
    /// The product computed, for its output facts.
    einsum: EinSum,
    batch: Vec<Place>,
    m: Place,
    k: Place,
    n: Place,
    /// The bits of the `f32` every product is multiplied by.
    scale_bits: u32,
}

stateless_op!(SmallProducts, "maas.SmallProducts");

impl SmallProducts {
    /// The op computing `einsum` on operands of `facts`, when it is an `f32` product of two
    /// computed tensors (no constant) with one row, one depth and one column axis, every
    /// other axis a batch axis of both operands with the same size, and products of at most
    /// [`MAX_PRODUCT`] multiplications or of sizes known only at run time.
    fn replacing(einsum: &EinSum, facts: [&TypedFact; 2]) -> Option<Self> {
        let f32s = facts.iter().all(|f| f.datum_type == f32::datum_type() && f.konst.is_none());
        let axes = &einsum.axes;
        if !f32s || einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() {
            return None;
        }
        if axes.input_count() != 2 || axes.output_count() != 1 {
            return None;
        }
        let once = |positions: &[usize]| match positions {
            [] => Some(None),
            [one] => Some(Some(*one)),
            _ => None,
        };
        let (mut batch, mut m, mut k, mut n) = (vec![], vec![], vec![], vec![]);
        for axis in axes.iter_all_axes() {
            let place = Place {
                a: once(&axis.inputs[0])?,
                b: once(&axis.inputs[1])?,
                c: once(&axis.outputs[0])?,
            };
            let role = match (place.a, place.b, place.c) {
                (Some(_), Some(_), Some(_)) => &mut batch,
                (Some(_), None, Some(_)) => &mut m,
                (Some(_), Some(_), None) => &mut k,
                (None, Some(_), Some(_)) => &mut n,
                _ => return None,
            };
            role.push(place);
        }
        let ([m], [k], [n]) = (m.as_slice(), k.as_slice(), n.as_slice()) else { return None };
        let [a, b] = facts;
        let dim = |fact: &TypedFact, at: Option<usize>| at.map(|p| fact.shape[p].clone());
        let same = |p: &Place| dim(a, p.a).is_some() && dim(a, p.a) == dim(b, p.b);
        if !batch.iter().chain([k]).all(same) {
            return None;
        }
        let sizes = [dim(a, m.a)?, dim(a, k.a)?, dim(b, n.b)?];
        let known: Option<Vec<usize>> = sizes.iter().map(|d| d.to_usize().ok()).collect();
        let large =
            known.is_some_and(|s| s.iter().fold(1, |p, &d| d.saturating_mul(p)) > MAX_PRODUCT);
        (!large).then(|| Self {
            einsum: einsum.clone(),
            batch,
            m: *m,
            k: *k,
            n: *n,
            scale_bits: 1f32.to_bits(),
        })
    }

    fn scale(&self) -> f32 {
        f32::from_bits(self.scale_bits)
    }

    fn run(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        Ok(tvec!(self.products(&a, &b)?.into_tvalue()))
    }

    /// The products of `a` and `b`.
    fn products(&self, a: &Tensor, b: &Tensor) -> TractResult<Tensor> {
        let (a_shape, b_shape) = (a.shape(), b.shape());
        let size = |shape: &[usize], position: Option<usize>| {
            position.and_then(|p| shape.get(p).copied()).context("an operand of too few axes")
        };
        let (m, k) = (size(a_shape, self.m.a)?, size(a_shape, self.k.a)?);
        let n = size(b_shape, self.n.b)?;
        ensure!(size(b_shape, self.k.b)? == k, "operands of depths {a_shape:?} and {b_shape:?}");
        let mut c_shape = tvec![0; self.batch.len() + 2];
        let mut batch_sizes = Vec::with_capacity(self.batch.len());
        for place in &self.batch {
            let (in_a, in_b) = (size(a_shape, place.a)?, size(b_shape, place.b)?);
            ensure!(in_a == in_b, "operands of batches {a_shape:?} and {b_shape:?}");
            batch_sizes.push(in_a);
        }
        let sizes = batch_sizes.iter().copied().chain([m, n]);
        for (place, size) in self.batch.iter().chain([&self.m, &self.n]).zip(sizes) {
            let axis = place.c.and_then(|p| c_shape.get_mut(p));
            *axis.context("an output axis out of place")? = size;
        }
        let mut c = Tensor::zero::<f32>(&c_shape)?;
        let strides = [strides(a_shape), strides(b_shape), strides(&c_shape)];
        let step = |place: &Place| {
            let positions = [place.a, place.b, place.c];
            let mut steps = [0; 3];
            for ((step, position), strides) in steps.iter_mut().zip(positions).zip(&strides) {
                *step = position.map_or(0, |p| strides[p]);
            }
            steps
        };
        let batch_steps: Vec<[usize; 3]> = self.batch.iter().map(step).collect();
        let ([a_m, _, c_m], [a_k, b_k, _], [_, b_n, c_n]) =
            (step(&self.m), step(&self.k), step(&self.n));
        let product = Product { m, k, n, a: (a_m, a_k), b: (b_k, b_n), c: (c_m, c_n) };
        let mut view = c.try_as_plain_ram_mut()?;
        let c_values = view.as_slice_mut::<f32>()?;
        let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
        let (a_values, b_values) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
        let multiplications = m.saturating_mul(k).saturating_mul(n);
        let mut small = (multiplications <= MAX_PRODUCT).then(|| SmallMatrices::new(k, n));
        let mut index = vec![0; batch_sizes.len()];
        for _ in 0..batch_sizes.iter().product::<usize>() {
            let mut at = [0; 3];
            for (&i, steps) in index.iter().zip(&batch_steps) {
                for (at, step) in at.iter_mut().zip(steps) {
                    *at += i * step;
                }
            }
            let [a_at, b_at, c_at] = at;
            let (a, b, c) = (&a_values[a_at..], &b_values[b_at..], &mut c_values[c_at..]);
            match &mut small {
                Some(small) => small.multiply(&product, self.scale(), a, b, c),
                None => product.multiply(self.scale(), a, b, c)?,
            }
            advance(&mut index, &batch_sizes);
        }
        Ok(c)
    }
}

impl Scales for SmallProducts {
    /// Products not scaled yet, multiplied by `scale` (an attention's `1 / sqrt(depth)`).
    fn scaled(&self, scale: f32) -> Option<Self> {
        let unscaled = self.scale_bits == 1f32.to_bits();
        unscaled.then(|| Self { scale_bits: scale.to_bits(), ..self.clone() })
    }
}

impl TypedOp for SmallProducts {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.einsum.output_facts(inputs)
    }

    as_op!();
}

/// The row-major strides of `shape`, in elements.
fn strides(shape: &[usize]) -> TVec<usize> {
    let mut strides = tvec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

/// One product's sizes and the strides of its operands and result (rows, then columns).
struct Product {
    m: usize,
    k: usize,
    n: usize,
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
}

impl Product {
    /// `c = scale × a × b` by `matrixmultiply` (through `ndarray`), in place, for products
    /// above [`MAX_PRODUCT`]: each slice starts at the product's first element.
    fn multiply(&self, scale: f32, a: &[f32], b: &[f32], c: &mut [f32]) -> TractResult<()> {
        use tract_ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2, ShapeBuilder};
        let (m, k, n) = (self.m, self.k, self.n);
        let a = ArrayView2::from_shape((m, k).strides(self.a), a)?;
        let b = ArrayView2::from_shape((k, n).strides(self.b), b)?;
        let mut c = ArrayViewMut2::from_shape((m, n).strides(self.c), c)?;
        general_mat_mul(scale, &a, &b, 0.0, &mut c);
        Ok(())
    }
}

/// Room for a small product's right operand in rows and for one row of its result,
/// reused product after product.
struct SmallMatrices {
    b: Vec<f32>,
    row: Vec<f32>,
}

impl SmallMatrices {
    fn new(k: usize, n: usize) -> Self {
        Self { b: vec![0.0; k * n], row: vec![0.0; n] }
    }

    /// `c = scale × a × b` for the product `p` in plain loops, each slice starting at the
    /// product's first element: as dot products where both operands run along the depth
    /// (a query by a key), else row by row of `b`, gathered first unless its rows lie in
    /// place.
    fn multiply(&mut self, p: &Product, scale: f32, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, k, n) = (p.m, p.k, p.n);
        if p.a.1 == 1 && p.b.0 == 1 {
            for row in 0..m {
                let a_row = &a[row * p.a.0..][..k];
                for column in 0..n {
                    let b_column = &b[column * p.b.1..][..k];
                    let dot: f32 = a_row.iter().zip(b_column).map(|(x, y)| x * y).sum();
                    c[row * p.c.0 + column * p.c.1] = scale * dot;
                }
            }
            return;
        }
        let (b_rows, b_step) = match p.b.1 {
            1 => (b, p.b.0),
            _ => {
                for (depth, values) in self.b.chunks_exact_mut(n.max(1)).enumerate() {
                    for (column, value) in values.iter_mut().enumerate() {
                        *value = b[depth * p.b.0 + column * p.b.1];
                    }
                }
                (self.b.as_slice(), n)
            }
        };
        for row in 0..m {
            self.row.fill(0.0);
            for depth in 0..k {
                let a_value = a[row * p.a.0 + depth * p.a.1];
                let b_row = &b_rows[depth * b_step..][..n];
                for (value, &b_value) in self.row.iter_mut().zip(b_row) {
                    *value += a_value * b_value;
                }
            }
            for (column, &value) in self.row.iter().enumerate() {
                c[row * p.c.0 + column * p.c.1] = scale * value;
            }
        }
    }
}

/// `index` moved on to the next of a row-major walk over `sizes`.
fn advance(index: &mut [usize], sizes: &[usize]) {
    for (i, &size) in index.iter_mut().zip(sizes).rev() {
        *i += 1;
        if *i < size {
            return;
        }
        *i = 0;
    }
}

/// A patch putting [`SmallProducts`] in place of the first product it computes; `None` when
/// there is none left.
pub(super) fn replace(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in &model.nodes {
        let Some(einsum) = node.op_as::<EinSum>() else { continue };
        let [a, b] = node.inputs.as_slice() else { continue };
        let facts = [model.outlet_fact(*a)?, model.outlet_fact(*b)?];
        if let Some(op) = SmallProducts::replacing(einsum, facts) {
            return TypedModelPatch::replace_single_op(model, node, &node.inputs, op).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::fold_scales;
    use tract_onnx::tract_core::ops::math::mul;

    /// `expression` over operands of `a_shape` and `b_shape` (`b` a constant with `konst`),
    /// with values spread over both signs.
    fn model(expression: &str, a_shape: &[usize], b_shape: &[usize], konst: bool) -> TypedModel {
        let facts = [f32::fact(a_shape), f32::fact(b_shape)];
        model_of(expression, facts, konst.then(|| values(b_shape, 5)))
    }

    /// `expression` over operands of `facts`, `b` the constant `konst` if there is one.
    fn model_of(expression: &str, facts: [TypedFact; 2], konst: Option<Tensor>) -> TypedModel {
        let [a_fact, b_fact] = facts;
        let mut model = TypedModel::default();
        let a = model.add_source("a", a_fact).unwrap();
        let b = match konst {
            Some(konst) => model.add_const("b", konst).unwrap(),
            None => model.add_source("b", b_fact).unwrap(),
        };
        let product = EinSum::new(expression.parse().unwrap(), f32::datum_type());
        let c = model.wire_node("product", product, &[a, b]).unwrap();
        model.select_output_outlets(&c).unwrap();
        model
    }

    fn values(shape: &[usize], seed: usize) -> Tensor {
        let count = shape.iter().product::<usize>();
        let values: Vec<f32> =
            (0..count).map(|i| ((i * 37 + seed * 11) % 29) as f32 / 7.0 - 2.0).collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    /// The shape and values of `model`'s output on `a` and `b`.
    fn run(model: TypedModel, a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f32>) {
        let inputs = tvec![a.clone().into_tvalue(), b.clone().into_tvalue()];
        let c = model.into_runnable().unwrap().run(inputs).unwrap().remove(0);
        let values = c.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        (c.shape().to_vec(), values)
    }

    /// Asserts the same shape and values within float rounding (the sums add in another
    /// order than tract's).
    fn assert_close(ours: (Vec<usize>, Vec<f32>), expected: (Vec<usize>, Vec<f32>), what: &str) {
        assert_eq!(ours.0, expected.0, "{what}");
        for (x, y) in ours.1.iter().zip(&expected.1) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}: {x} vs {y}");
        }
    }

    #[test]
    fn a_scale_after_the_products_is_folded_into_them() {
        let expression = "bshd,bthd->bhst";
        let shape = [2, 6, 4, 8];
        let mut model = model(expression, &shape, &shape, false);
        let scale = model.add_const("scale", tensor4(&[[[[0.125f32]]]])).unwrap();
        let product = model.output_outlets().unwrap()[0];
        let scaled = model.wire_node("scaled", mul(), &[product, scale]).unwrap();
        model.select_output_outlets(&scaled).unwrap();
        let (a, b) = (values(&shape, 1), values(&shape, 2));
        let expected = run(model.clone(), &a, &b);
        replace(&model).unwrap().expect("a small product").apply(&mut model).unwrap();
        fold_scales::<SmallProducts>(&mut model).unwrap();
        let names: Vec<_> = model.nodes.iter().map(|n| n.op.name().to_string()).collect();
        assert_eq!(names.iter().filter(|n| n.as_str() == "Mul").count(), 0, "{names:?}");
        assert_close(run(model, &a, &b), expected, "scaled");
    }

    #[test]
    fn products_in_any_layout_match_tracts() {
        let cases: [(&str, &[usize], &[usize]); 5] = [
            ("mk,kn->mn", &[3, 5], &[5, 4]),
            ("bmk,bkn->bmn", &[3, 4, 5], &[3, 5, 2]),
            // An attention block's query by key, and its weights by value, per batch and head.
            ("bshd,bthd->bhst", &[2, 6, 4, 8], &[2, 6, 4, 8]),
            ("bhst,bthd->bshd", &[2, 4, 6, 6], &[2, 6, 4, 8]),
            // Rows and columns anywhere, batch axes in either order.
            ("kbmh,hnkb->nhmb", &[4, 2, 3, 5], &[5, 6, 4, 2]),
        ];
        for (expression, a_shape, b_shape) in cases {
            let (a, b) = (values(a_shape, 1), values(b_shape, 2));
            let expected = run(model(expression, a_shape, b_shape, false), &a, &b);
            let mut replaced = model(expression, a_shape, b_shape, false);
            replace(&replaced)
                .unwrap()
                .unwrap_or_else(|| panic!("{expression}"))
                .apply(&mut replaced)
                .unwrap();
            assert!(replace(&replaced).unwrap().is_none(), "replaced once");
            let names: Vec<_> = replaced.nodes.iter().map(|n| n.op.name().to_string()).collect();
            assert!(names.contains(&"maas.SmallProducts".to_owned()), "{names:?}");
            assert_close(run(replaced, &a, &b), expected, expression);
        }
    }

    #[test]
    fn products_of_sizes_known_at_run_time_match_tracts_small_or_large() {
        let symbols = SymbolScope::default();
        let (batch, steps) = (symbols.sym("batch"), symbols.sym("steps"));
        let shape = |last: usize| f32::fact(dims![batch.clone(), steps.clone(), 4, last]);
        let expression = "bshd,bthd->bhst";
        let mut replaced = model_of(expression, [shape(8), shape(8)], None);
        replace(&replaced)
            .unwrap()
            .expect("a product of unknown size")
            .apply(&mut replaced)
            .unwrap();
        // Products of 6 × 8 by 8 × 6 (gathered) and of 40 × 8 by 8 × 40 (matrixmultiply).
        for steps in [6, 40] {
            let (a, b) = (values(&[2, steps, 4, 8], 1), values(&[2, steps, 4, 8], 2));
            let concrete = model(expression, &[2, steps, 4, 8], &[2, steps, 4, 8], false);
            let expected = run(concrete, &a, &b);
            assert_close(run(replaced.clone(), &a, &b), expected, &format!("{steps} steps"));
        }
    }

    #[test]
    fn products_by_constants_large_products_and_other_sums_stay_tracts() {
        let cases: [(&str, &[usize], &[usize], bool); 4] = [
            ("bmk,bkn->bmn", &[3, 4, 5], &[3, 5, 2], true),
            ("mk,kn->mn", &[17, 16], &[16, 16], false),
            ("bk,bk->b", &[3, 4], &[3, 4], false),
            ("bmk,kn->bmn", &[3, 4, 5], &[5, 2], false),
        ];
        for (expression, a_shape, b_shape, konst) in cases {
            let model = model(expression, a_shape, b_shape, konst);
            assert!(replace(&model).unwrap().is_none(), "{expression} {a_shape:?} {b_shape:?}");
        }
    }
}
