"""cloud/template.yaml: least privilege, and rules the local engine can run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from voicebot.local.cloud import default_template
from voicebot.local.rules import load_rules, load_template, parse_rule_sql, resolve_sub


def statements(node):
    if isinstance(node, dict):
        if "Statement" in node and isinstance(node["Statement"], list):
            yield from node["Statement"]
        for value in node.values():
            yield from statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from statements(value)


def test_no_iam_statement_uses_a_wildcard_action():
    found = list(statements(load_template(default_template())))
    assert len(found) >= 10
    for statement in found:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in a for a in actions), statement
        assert statement.get("Effect") == "Allow"
        assert statement.get("Resource") != "*", statement


def test_every_rule_sql_parses_in_the_local_engine():
    template = load_template(default_template())
    rules = [r for r in template["Resources"].values() if r["Type"] == "AWS::IoT::TopicRule"]
    assert len(rules) == 2
    for rule in rules:
        parse_rule_sql(resolve_sub(rule["Properties"]["TopicRulePayload"]["Sql"], {"TopicRoot": "voicebot"}))
    assert len(load_rules(default_template(), topic_root="voicebot")) == 2


def test_invoke_permissions_are_scoped_to_the_rules():
    resources = load_template(default_template())["Resources"]
    perms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"]
    assert {p["SourceArn"]["Fn::GetAtt"][0] for p in perms} == {"ChatRule", "SpeechRule"}
    assert all(p["Principal"] == "iot.amazonaws.com" for p in perms)


def test_cfn_lint_is_clean():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run([str(cfn_lint), str(default_template())], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_history_sort_key_cannot_collide_and_ttl_is_on():
    props = load_template(default_template())["Resources"]["HistoryTable"]["Properties"]
    assert [k["AttributeName"] for k in props["KeySchema"]] == ["thing", "turn"]
    assert props["TimeToLiveSpecification"]["Enabled"] is True
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert Path(default_template()).read_text().count("<epoch ms, 13 digits>#<requestId>") == 1
