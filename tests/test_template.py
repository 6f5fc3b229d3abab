"""cloud/template.yaml: least privilege, and rules the local engine can run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.cloud.tts import speech_rate
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
    assert len(found) >= 8
    for statement in found:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in a for a in actions), statement
        assert statement.get("Effect") == "Allow"
        if statement.get("Resource") == "*":  # only where the action has no resource type to name
            assert actions == ["polly:SynthesizeSpeech"], statement


def test_polly_may_synthesize_without_a_lexicon():
    """SynthesizeSpeech without a lexicon is authorized on "*": a lexicon/* resource denies every sentence."""
    found = [s for s in statements(load_template(default_template())) if s["Action"] == "polly:SynthesizeSpeech"]
    assert len(found) == 1 and found[0]["Resource"] == "*"


def test_rule_invocations_are_for_a_live_conversation():
    """IoT rules invoke asynchronously: no retry minutes later, old events dropped to a queue, not spoken."""
    resources = load_template(default_template())["Resources"]
    for name in ("ChatFunction", "SpeechFunction"):
        props = resources[name]["Properties"]
        config = props["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == 0 and config["MaximumEventAgeInSeconds"] <= 120
        assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS",
                                                           "Destination": {"Fn::GetAtt": ["FailedEventsQueue", "Arn"]}}
        assert "ReservedConcurrentExecutions" in props
        log_group = resources[name.replace("Function", "LogGroup")]["Properties"]
        assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{name}}}"} and log_group["RetentionInDays"]
    rule_role = resources["RuleErrorRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    assert set(rule_role["Action"]) == {"logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"}


@pytest.mark.parametrize(("rate", "ok"), [("19%", False), ("20%", True), ("120%", True), ("200%", True),
                                          ("201%", False), ("999%", False), ("fast", False)])
def test_speech_rate_is_limited_to_what_polly_accepts(rate, ok):
    pattern = load_template(default_template())["Parameters"]["SpeechRate"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, rate)) is ok  # CloudFormation matches the whole value
    if ok:
        assert speech_rate(rate) == rate
    else:
        with pytest.raises(ValueError, match="20% to 200%"):
            speech_rate(rate)


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


def test_chat_settings_reach_the_lambda_from_the_stack_parameters(monkeypatch):
    from voicebot.cloud.aws import chat_settings_from_env
    from voicebot.cloud.chat import ChatSettings

    template = load_template(default_template())
    env = template["Resources"]["ChatFunction"]["Properties"]["Environment"]["Variables"]
    parameters = template["Parameters"]
    for variable, parameter, field in (("FIRST_CLAUSE_CHARS", "FirstClauseChars", "first_clause_chars"),
                                       ("HISTORY_TURNS", "HistoryTurns", "history_turns")):
        assert env[variable] == {"Ref": parameter}
        assert parameters[parameter]["Default"] == getattr(ChatSettings(), field)  # one default, in both places
        monkeypatch.setenv(variable, "0")
        assert getattr(chat_settings_from_env(), field) == 0
