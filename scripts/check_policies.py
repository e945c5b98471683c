#!/usr/bin/env python3
"""Least-privilege check of template.yaml: what each function's (and the batch state machine's)
IAM policy may grant.

Every function's `Policies` must be explicit IAM statements (no SAM policy templates such as
S3CrudPolicy, no managed policies, no `Role` of its own), and their S3 grants, with every
intrinsic function evaluated for both bucket choices (created by the stack, or given as
ModelBucketName), must be exactly the grants of ALLOWED below: on the bucket MAAS_STORE names,
each action on its listed key patterns, and s3:ListBucket only with an s3:prefix condition.
A grant beyond ALLOWED fails (the point of the check), and so does a missing one (the function
would fail in AWS). The model-upload routes must use the AWS_IAM authorizer.

Then the check proves it can fail: it widens the template in memory in several ways and
requires each widened copy to be refused.

Usage: check_policies.py [template.yaml]   (run by scripts/test.sh; exit status 1 on failure)
"""

import copy
import re
import sys

from cfnlint.decode import cfn_yaml

# Function -> action -> the key patterns (relative to MAAS_STORE's prefix) it may be granted
# on. For s3:ListBucket the patterns are the allowed values of its s3:prefix condition. For
# actions of other services, the exact resources (`<Resource.Attribute>` for a Fn::GetAtt).
ALLOWED = {
    "PredictFunction": {
        "s3:GetObject": {"models/*"},
        "s3:ListBucket": {"models/*"},
    },
    "ModelUploadFunction": {
        "s3:GetObject": {"models/*", "staging/*"},
        "s3:PutObject": {"models/*", "staging/*"},
        "s3:DeleteObject": {"models/*", "staging/*"},
        "s3:ListBucket": {"models/*"},
    },
    "BatchPredictFunction": {
        "s3:GetObject": {"models/*", "batch/input/*"},
        "s3:PutObject": {"batch/output/*"},
        "s3:AbortMultipartUpload": {"batch/output/*"},
        "s3:ListBucket": {"models/*"},
    },
    # The Distributed Map: invokes batch-predict, reads inputs, writes its results, and runs
    # its own child executions.
    "BatchStateMachine": {
        "lambda:InvokeFunction": {"<BatchPredictFunction.Arn>", "<BatchPredictFunction.Arn>:*"},
        "s3:GetObject": {"batch/input/*", "batch/output/state-machine/*"},
        "s3:PutObject": {"batch/output/state-machine/*"},
        "s3:ListMultipartUploadParts": {"batch/output/state-machine/*"},
        "s3:AbortMultipartUpload": {"batch/output/state-machine/*"},
        "states:StartExecution": {"arn:aws:states:us-east-1:123456789012:stateMachine:maas-batch"},
        "states:DescribeExecution": {"arn:aws:states:us-east-1:123456789012:execution:maas-batch/*"},
        "states:StopExecution": {"arn:aws:states:us-east-1:123456789012:execution:maas-batch/*"},
    },
}

# Resource types whose Policies are checked.
CHECKED_TYPES = {"AWS::Serverless::Function", "AWS::Serverless::StateMachine"}

# Functions whose every HTTP route must be SigV4-authorised.
IAM_ONLY_ROUTES = {"ModelUploadFunction"}

PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "maas",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/maas/"
    "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
}

# The two ways to deploy: the stack creates the bucket, or it is given.
SCENARIOS = [{"ModelBucketName": ""}, {"ModelBucketName": "given-model-bucket"}]


class Unresolvable(Exception):
    pass


NO_VALUE = object()


class Evaluator:
    """Evaluates the intrinsic functions the template uses, for one set of parameters."""

    def __init__(self, template, parameters):
        self.refs = dict(PSEUDO)
        for name, spec in (template.get("Parameters") or {}).items():
            self.refs[name] = str(parameters.get(name, spec.get("Default", "")))
        self.template = template
        self.conditions = {}
        for name in template.get("Conditions") or {}:
            self.condition(name)

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.eval(self.template["Conditions"][name]))
        return self.conditions[name]

    def eval(self, node):
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref" or key.startswith("Fn::") or key == "Condition":
                return self.function(key, arg)
        if isinstance(node, dict):
            return {k: v for k, v in ((k, self.eval(v)) for k, v in node.items()) if v is not NO_VALUE}
        if isinstance(node, list):
            return [v for v in (self.eval(v) for v in node) if v is not NO_VALUE]
        return node

    def function(self, key, arg):
        if key == "Ref":
            if arg == "AWS::NoValue":
                return NO_VALUE
            if arg not in self.refs:
                raise Unresolvable(f"Ref {arg}")
            return self.refs[arg]
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::GetAtt":
            resource, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
            return f"<{resource}.{attribute}>"
        if key == "Fn::If":
            name, then, otherwise = arg
            return self.eval(then if self.condition(name) else otherwise)
        if key == "Fn::Equals":
            a, b = (self.eval(x) for x in arg)
            return str(a) == str(b)
        if key == "Fn::Not":
            return not self.eval(arg[0])
        if key == "Fn::And":
            return all(self.eval(x) for x in arg)
        if key == "Fn::Or":
            return any(self.eval(x) for x in arg)
        if key == "Fn::Select":
            index, items = self.eval(arg[0]), self.eval(arg[1])
            return items[int(index)]
        if key == "Fn::Split":
            return str(self.eval(arg[1])).split(arg[0])
        if key == "Fn::Join":
            return arg[0].join(str(x) for x in self.eval(arg[1]))
        if key == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], self.eval(arg[1]))

            def replace(match):
                name = match.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in names:
                    return str(names[name])
                if name in self.refs:
                    return self.refs[name]
                if "." in name and name.split(".")[0] in self.template.get("Resources", {}):
                    return f"<{name}>"
                raise Unresolvable(f"${{{name}}} in Fn::Sub")

            return re.sub(r"\$\{([^}]+)\}", replace, text)
        raise Unresolvable(key)


def as_list(value):
    return value if isinstance(value, list) else [value]


def store_location(template, function, ev):
    """The (bucket, prefix) of the function's MAAS_STORE."""
    variables = {}
    for source in (template.get("Globals", {}).get("Function", {}), function["Properties"]):
        variables.update((source.get("Environment") or {}).get("Variables") or {})
    store = ev.eval(variables.get("MAAS_STORE", ""))
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", str(store))
    if not match:
        raise Unresolvable(f"MAAS_STORE {store!r} is not s3://bucket[/prefix]")
    prefix = match.group(2)
    return match.group(1), (prefix if not prefix or prefix.endswith("/") else prefix + "/")


def grants_of(name, function, ev, problems):
    """The (action, pattern) pairs a function's policies grant, with problems noted."""
    props = function["Properties"]
    if "Role" in props:
        problems.append(f"{name}: has its own Role, which this check cannot see into")
    bucket, prefix = store_location(ev.template, function, ev)
    bucket_arn = f"arn:aws:s3:::{bucket}"
    grants = set()
    for policy in as_list(props.get("Policies") or []):
        if not isinstance(policy, dict) or not set(policy) <= {"Statement", "Version"}:
            shown = policy if isinstance(policy, str) else ", ".join(policy)
            problems.append(
                f"{name}: policy {shown} is not an explicit statement list "
                "(SAM policy templates and managed policies grant whole buckets or services)"
            )
            continue
        for statement in as_list(ev.eval(policy["Statement"])):
            for key in ("NotAction", "NotResource", "NotPrincipal"):
                if key in statement:
                    problems.append(f"{name}: statement uses {key}")
            if statement.get("Effect") == "Deny":
                continue
            resources = as_list(statement.get("Resource", []))
            for action in as_list(statement.get("Action", [])):
                allowed = ALLOWED[name].get(action)
                if allowed is None:
                    problems.append(f"{name}: grants {action}, not one of {sorted(ALLOWED[name])}")
                    continue
                for resource in resources:
                    if not action.startswith("s3:"):
                        grants.add((action, resource))
                        continue
                    if action == "s3:ListBucket":
                        if resource != bucket_arn:
                            problems.append(f"{name}: s3:ListBucket on {resource}, not {bucket_arn}")
                            continue
                        condition = statement.get("Condition") or {}
                        prefixes = (condition.get("StringLike") or {}).get("s3:prefix")
                        if prefixes is None:
                            problems.append(f"{name}: s3:ListBucket without an s3:prefix condition")
                            continue
                        for listed in as_list(prefixes):
                            if not listed.startswith(prefix):
                                problems.append(f"{name}: s3:ListBucket of {listed} outside {prefix}")
                            grants.add((action, listed[len(prefix):]))
                        continue
                    if not resource.startswith(bucket_arn + "/" + prefix):
                        problems.append(f"{name}: {action} on {resource}, outside {bucket_arn}/{prefix}")
                        continue
                    grants.add((action, resource[len(bucket_arn) + 1 + len(prefix):]))
    return grants


def check(template):
    """Every problem found in the template, as readable lines."""
    problems = []
    functions = {
        name: resource
        for name, resource in template["Resources"].items()
        if resource.get("Type") in CHECKED_TYPES
    }
    for name in sorted(set(functions) ^ set(ALLOWED)):
        problems.append(f"{name}: in the template or in ALLOWED but not both")
    global_function = template.get("Globals", {}).get("Function", {})
    for key in ("Policies", "Role"):
        if key in global_function:
            problems.append(f"Globals.Function.{key} applies to every function")
    for scenario in SCENARIOS:
        ev = Evaluator(template, scenario)
        for name in sorted(set(functions) & set(ALLOWED)):
            try:
                grants = grants_of(name, functions[name], ev, problems)
            except Unresolvable as err:
                problems.append(f"{name}: cannot evaluate {err}")
                continue
            expected = {(a, p) for a, patterns in ALLOWED[name].items() for p in patterns}
            for action, pattern in sorted(grants - expected):
                problems.append(f"{name}: grants {action} on `{pattern}`, beyond what it may do")
            for action, pattern in sorted(expected - grants):
                problems.append(f"{name}: lacks {action} on `{pattern}`, which it needs")
    for name in sorted(IAM_ONLY_ROUTES & set(functions)):
        for event_name, event in (functions[name]["Properties"].get("Events") or {}).items():
            if event.get("Type") != "HttpApi":
                continue
            authorizer = ((event.get("Properties") or {}).get("Auth") or {}).get("Authorizer")
            if authorizer != "AWS_IAM":
                problems.append(f"{name}: route {event_name} is not behind the AWS_IAM authorizer")
    return sorted(set(problems))


def widenings():
    """Ways to widen the template, each of which the check must refuse."""

    def statement(t, function, sid):
        policies = t["Resources"][function]["Properties"]["Policies"]
        found = [s for p in policies for s in as_list(p.get("Statement", [])) if s.get("Sid") == sid]
        return found[0]

    def retarget(s, old, new):
        """Points a statement's `!Sub` resources from key pattern `old` to `new`."""
        for resource in as_list(s["Resource"]):
            resource["Fn::Sub"][0] = resource["Fn::Sub"][0].replace(old, new)

    def predict_reads_the_whole_bucket(t):
        retarget(statement(t, "PredictFunction", "ReadModels"), "/models/*", "/*")

    def predict_writes_models(t):
        statement(t, "PredictFunction", "ReadModels")["Action"] = ["s3:GetObject", "s3:PutObject"]

    def predict_gets_s3_crud_policy(t):
        t["Resources"]["PredictFunction"]["Properties"]["Policies"].append(
            {"S3CrudPolicy": {"BucketName": "any"}}
        )

    def upload_lists_without_condition(t):
        del statement(t, "ModelUploadFunction", "ListModels")["Condition"]

    def upload_lists_everything(t):
        statement(t, "ModelUploadFunction", "ListModels")["Condition"]["StringLike"]["s3:prefix"] = "*"

    def upload_writes_outside_its_prefixes(t):
        retarget(statement(t, "ModelUploadFunction", "ReadWriteModelsAndStaging"), "/staging/*", "/batch/*")

    def upload_route_without_iam(t):
        events = t["Resources"]["ModelUploadFunction"]["Properties"]["Events"]
        del next(iter(events.values()))["Properties"]["Auth"]

    def batch_gets_every_s3_action(t):
        statement(t, "BatchPredictFunction", "WriteBatchOutput")["Action"] = "s3:*"

    def batch_writes_its_input(t):
        retarget(statement(t, "BatchPredictFunction", "WriteBatchOutput"), "batch/output/", "batch/input/")

    def batch_reads_another_bucket(t):
        retarget(statement(t, "BatchPredictFunction", "ReadModelsAndBatchInput"), "${Bucket}", "other")

    def state_machine_invokes_any_function(t):
        statement(t, "BatchStateMachine", "InvokeBatchPredict")["Resource"] = "*"

    def state_machine_writes_inputs(t):
        retarget(statement(t, "BatchStateMachine", "WriteResults"), "batch/output/state-machine/", "batch/input/")

    return [
        state_machine_invokes_any_function,
        state_machine_writes_inputs,
        predict_reads_the_whole_bucket,
        predict_writes_models,
        predict_gets_s3_crud_policy,
        upload_lists_without_condition,
        upload_lists_everything,
        upload_writes_outside_its_prefixes,
        upload_route_without_iam,
        batch_gets_every_s3_action,
        batch_writes_its_input,
        batch_reads_another_bucket,
    ]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    template = cfn_yaml.load(path)
    problems = check(template)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        return 1
    print(f"{path}: every function's policy is within its allowed actions and prefixes")
    for widen in widenings():
        widened = copy.deepcopy(template)
        widen(widened)
        found = check(widened)
        if not found:
            print(f"self-test: {widen.__name__}: NOT refused; the check is broken")
            return 1
        print(f"self-test: {widen.__name__}: refused ({'; '.join(found)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
