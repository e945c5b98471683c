//! Bad requests get their 4xx and a message naming the problem; none panics or reaches 5xx.

use std::sync::Arc;

use maas::store::LocalStore;
use maas_tests::{call, predictor, repo_root};
use serde_json::json;

fn example_predictor(cache: &tempfile::TempDir) -> maas::Predictor {
    predictor(Arc::new(LocalStore::new(repo_root().join("scripts/example-store"))), cache)
}

fn iris_input(datatype: &str, shape: serde_json::Value, data: serde_json::Value) -> Vec<u8> {
    json!({"inputs": [{"name": "float_input", "shape": shape, "datatype": datatype, "data": data}]})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_request_gets_its_status_and_a_message() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = example_predictor(&cache);
    let good_row = json!([[5.1, 3.5, 1.4, 0.2]]);
    let oversized = vec![b' '; (6 << 20) + 1];
    // (method, path, body, expected status, a piece of the expected message)
    type Case<'a> = (&'a str, &'a str, Option<Vec<u8>>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/v2/models/iris/infer", Some(b"{\"inputs\": [".to_vec()), 400, "invalid request body"),
        ("POST", "/v2/models/iris/infer", Some(b"not json".to_vec()), 400, "invalid request body"),
        ("POST", "/v2/models/iris/infer", None, 400, "invalid request body"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP64", json!([1, 4]), good_row.clone())), 400, "input `float_input`: datatype is FP64 but the model expects FP32"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("INT32", json!([1, 4]), json!([[5, 3, 1, 0]]))), 400, "datatype is INT32"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP16", json!([1, 4]), good_row.clone())), 400, "datatype is FP16 but the model expects FP32"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("BYTES", json!([1, 4]), good_row.clone())), 400, "datatype is BYTES but the model expects FP32"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP32", json!([2, 4]), good_row.clone())), 400, "nested data has 1 elements at depth 0 where the shape says 2"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP32", json!([1, 4]), json!([5.1, 3.5, 1.4]))), 400, "needs 4 elements but data has 3"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP32", json!([1, 5]), json!([1, 2, 3, 4, 5]))), 400, "does not match the model's shape [-1, 4]"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP32", json!([4]), json!([1, 2, 3, 4]))), 400, "does not match the model's shape"),
        ("POST", "/v2/models/iris/infer", Some(iris_input("FP32", json!([1, 4]), json!([[1, 2, "x", 4]]))), 400, "element 2 (\"x\") is not a valid FP32 value"),
        ("POST", "/v2/models/iris/infer", Some(json!({"inputs": [{"name": "petals", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string().into_bytes()), 400, "input `petals`: the model has no such input; its inputs are `float_input`"),
        ("POST", "/v2/models/iris/infer", Some(json!({"inputs": []}).to_string().into_bytes()), 400, "input `float_input`: missing"),
        ("POST", "/v2/models/iris/infer", Some(json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": [{"name": "scores"}]}).to_string().into_bytes()), 400, "requested output `scores` does not exist"),
        ("POST", "/v2/models/tulip/infer", Some(iris_input("FP32", json!([1, 4]), good_row.clone())), 404, "model `tulip` not found"),
        ("POST", "/v2/models/iris/versions/9/infer", Some(iris_input("FP32", json!([1, 4]), good_row.clone())), 404, "model `iris` has no version 9"),
        ("POST", "/v2/models/iris/versions/one/infer", Some(iris_input("FP32", json!([1, 4]), good_row.clone())), 404, "model `iris` has no alias `one`"),
        ("POST", "/v2/models/iris/versions/1x/infer", Some(iris_input("FP32", json!([1, 4]), good_row.clone())), 400, "invalid model version \"1x\""),
        ("GET", "/v2/models/iris/versions/a%20b", None, 400, "invalid alias"),
        ("POST", "/v2/models/iris/versions/0/infer", Some(iris_input("FP32", json!([1, 4]), good_row.clone())), 400, "invalid model version \"0\""),
        ("GET", "/v2/models/iris/versions/-3", None, 400, "invalid model version \"-3\""),
        ("GET", "/v2/models/..%2F..%2Fetc/ready", None, 400, "invalid model name"),
        ("GET", "/v2/models/.hidden", None, 400, "invalid model name"),
        ("POST", "/v2/models/iris/infer", Some(oversized), 413, "over the limit of 6291456 bytes"),
        ("GET", "/v2/models/iris/infer", None, 405, "GET is not allowed on /v2/models/iris/infer; use POST"),
        ("POST", "/v2/models/iris", Some(b"{}".to_vec()), 405, "use GET"),
        ("GET", "/v1/iris", None, 404, "no route for /v1/iris"),
        ("GET", "/v2/models/iris/versions/1/explain", None, 404, "no route"),
    ];
    for (method, path, body, status, message) in cases {
        let (got_status, got) = call(&predictor, method, path, body).await;
        let error = got["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error message in {got}"));
        assert_eq!(got_status, status, "{method} {path}: {error}");
        assert!(error.contains(message), "{method} {path}: {error:?} does not contain {message:?}");
    }
}
