"""The Heat connector's pure parts, without Heat: names and tags, stack statuses, outputs, parameters,
providers and their Keystone sessions, the stack request, and how Heat's errors reach the broker.

No network and no Heat engine: every test builds its input by hand (heatclient and keystoneauth1
objects included) and looks at what an admin or a learner would see.
"""

from __future__ import annotations

import json
import re

import pytest

from broker.connector import DesktopEndpoint, LabSpec, ObservedState
from broker.errors import CapacityError, ConfigError, PermanentError, TransientError
from connectors.credentials import derive
from connectors.heat import naming, outputs, parameters, providers, request, status
from connectors.heat.errors import BUSY, MISCONFIGURED, REFUSED, StackNotFound, heat_errors
from connectors.heat.outputs import Credentials, OutputError
from connectors.heat.providers import Provider, keystone_session, parse_providers
from connectors.heat.request import StackRequest

# What Heat's engine accepts as a stack name (heat/engine/service.py, _validate_new_stack).
HEAT_STACK_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_.-]{0,254}")
HEAT_TAG_LENGTH = 80  # heat/db/models.py: StackTag.tag is Unicode(80)
OWNER = "alice.learner@example.edu"


def _heat_entry(**heat: object) -> dict[str, object]:
    """A catalogue entry's spec as `images.spec` holds it: an RDP + SSH desktop and a Heat template."""
    return {
        "id": "linux-desktop",
        "hosts": [
            {"name": "desktop", "ports": [{"protocol": "rdp", "port": 3389}, {"protocol": "ssh", "port": 22}]},
            {"name": "router", "ports": [{"protocol": "ssh", "port": 2222}]},
        ],
        "backends": {"heat": {"template": "heat/lab.yaml", **heat}},
    }


# -- naming --------------------------------------------------------------------------------------------


class TestNaming:
    def test_stack_name_is_prefix_lab_id(self) -> None:
        assert naming.stack_name("labdesk", 42) == "labdesk-lab-42"
        assert naming.stack_name("uni-x", 7) == "uni-x-lab-7"

    @pytest.mark.parametrize("prefix", ["a", "labdesk", "LabDesk-2", "x" + "9" * 31, "a" + "-" * 31])
    @pytest.mark.parametrize("lab_id", [1, 42, 2**63 - 1])
    def test_every_name_is_valid_for_heat(self, prefix: str, lab_id: int) -> None:
        name = naming.stack_name(naming.check_prefix(prefix), lab_id)
        assert HEAT_STACK_NAME.fullmatch(name), name
        assert len(name) <= 255
        for tag in naming.stack_tags(prefix, lab_id, "course-v1:OrgX+" + "C" * 200):
            assert len(tag) <= HEAT_TAG_LENGTH, tag
            assert "," not in tag

    @pytest.mark.parametrize("prefix", ["a", "labdesk", "LabDesk-2", "x" * 32])
    def test_good_prefixes_are_kept(self, prefix: str) -> None:
        assert naming.check_prefix(prefix) == prefix

    @pytest.mark.parametrize("prefix", ["", "1lab", "-lab", "lab_desk", "lab.desk", "lab desk", "läb", "x" * 33, "lab\n", "lab,x"])
    def test_bad_prefixes_are_refused_saying_what_a_prefix_may_contain(self, prefix: str) -> None:
        with pytest.raises(ValueError) as raised:
            naming.check_prefix(prefix)
        assert str(raised.value) == f"name_prefix {prefix!r}: a letter, then up to 31 letters, digits or '-'"

    def test_tags_mark_the_stack_its_lab_and_its_course(self) -> None:
        assert naming.stack_tags("labdesk", 42, "course-v1:MITx+6.002x+2026_T1") == [
            "labdesk",
            "labdesk-lab-42",
            "labdesk-course-course-v1-MITx-6-002x-2026-T1",
        ]
        assert naming.stack_tags("labdesk", 42) == ["labdesk", "labdesk-lab-42"]

    def test_course_tag_has_no_commas_or_spaces(self) -> None:
        # Heat takes tags as one comma-separated string: a comma would split the course in two.
        tag = naming.course_tag("labdesk", " Intro to Linux, Spring 2026 ")
        assert tag == "labdesk-course-Intro-to-Linux-Spring-2026"
        assert "," not in tag and " " not in tag

    def test_a_long_course_tag_is_cut_to_heats_80_characters(self) -> None:
        prefix = "p" * 32
        tag = naming.course_tag(prefix, "course-v1:Organisation+" + "Advanced-Networking-" * 10)
        assert tag == f"{prefix}-course-course-v1-Organisation-Advanced-Networki"
        assert len(tag) == HEAT_TAG_LENGTH
        # A cut landing on a '-' drops it.
        assert naming.course_tag(prefix, "c" * 39 + "-and-more") == f"{prefix}-course-" + "c" * 39
        # The default prefix keeps up to 65 characters of the course.
        assert naming.course_tag("labdesk", "c" * 100) == "labdesk-course-" + "c" * 65

    def test_name_and_tags_hold_no_learner_identity(self) -> None:
        spec = LabSpec(42, "linux-desktop", OWNER, _heat_entry(), course="course-v1:OrgX+CS101+2026", protocol="rdp")
        built = StackRequest.from_spec(spec)
        name = naming.stack_name("labdesk", built.lab_id)
        tags = ",".join(naming.stack_tags("labdesk", built.lab_id, built.course))
        for text in (name, tags, json.dumps(built.to_json())):
            assert OWNER not in text
            assert "alice" not in text
        assert name == "labdesk-lab-42"

    def test_lab_id_from_the_lab_tag(self) -> None:
        assert naming.lab_id_of("labdesk", ["labdesk", "labdesk-lab-42", "labdesk-course-x"], "renamed-by-hand") == 42

    def test_the_lab_tag_wins_over_the_name(self) -> None:
        assert naming.lab_id_of("labdesk", ["labdesk", "labdesk-lab-42"], "labdesk-lab-41") == 42

    @pytest.mark.parametrize("tags", [None, [], ["labdesk"]])
    def test_lab_id_from_the_name_when_tags_say_nothing(self, tags: list[str] | None) -> None:
        assert naming.lab_id_of("labdesk", tags, "labdesk-lab-42") == 42

    @pytest.mark.parametrize("prefix", ["labdesk", "uni-x", "x" * 32])
    def test_lab_id_round_trips_through_name_and_tags(self, prefix: str) -> None:
        tags = naming.stack_tags(prefix, 9001, "course, with spaces")
        assert naming.lab_id_of(prefix, tags, naming.stack_name(prefix, 9001)) == 9001
        assert naming.lab_id_of(prefix, None, naming.stack_name(prefix, 9001)) == 9001

    @pytest.mark.parametrize(
        ("tags", "name"),
        [
            (["labdesk2", "labdesk2-lab-42"], "labdesk2-lab-42"),  # another installation's prefix
            (["lab", "lab-lab-42"], "lab-lab-42"),  # a prefix that is a prefix of ours
            (["team-x", "team-x-lab-42"], "team-x-lab-42"),  # another project's stack
            (["prod"], "web-frontend"),
            (None, "mylabdesk-lab-42"),
            (None, "labdesk-lab-42-old"),
            (None, "labdesk-lab-"),
            (None, "labdesk-lab-x"),
            (["LABDESK-lab-42"], "LABDESK-lab-42"),
        ],
    )
    def test_foreign_stacks_are_not_ours(self, tags: list[str] | None, name: str) -> None:
        assert naming.lab_id_of("labdesk", tags, name) is None


# -- status ----------------------------------------------------------------------------------------------

PENDING, READY, SUSPENDED, GONE, ERROR = (
    ObservedState.PENDING,
    ObservedState.READY,
    ObservedState.SUSPENDED,
    ObservedState.GONE,
    ObservedState.ERROR,
)
# Every Heat action x status, with what the lab is doing then.
STATUS_TABLE = [
    ("CREATE_IN_PROGRESS", PENDING),
    ("CREATE_COMPLETE", READY),
    ("CREATE_FAILED", ERROR),
    ("SUSPEND_IN_PROGRESS", PENDING),
    ("SUSPEND_COMPLETE", SUSPENDED),
    ("SUSPEND_FAILED", ERROR),
    ("RESUME_IN_PROGRESS", PENDING),
    ("RESUME_COMPLETE", READY),
    ("RESUME_FAILED", ERROR),
    ("DELETE_IN_PROGRESS", PENDING),
    ("DELETE_COMPLETE", GONE),
    ("DELETE_FAILED", ERROR),
    ("UPDATE_IN_PROGRESS", PENDING),
    ("UPDATE_COMPLETE", READY),
    ("UPDATE_FAILED", ERROR),
    ("CHECK_IN_PROGRESS", PENDING),
    ("CHECK_COMPLETE", READY),
    ("CHECK_FAILED", ERROR),
    ("ROLLBACK_IN_PROGRESS", PENDING),
    ("ROLLBACK_COMPLETE", ERROR),
    ("ROLLBACK_FAILED", ERROR),
    ("SNAPSHOT_IN_PROGRESS", PENDING),
    ("SNAPSHOT_COMPLETE", READY),
    ("SNAPSHOT_FAILED", ERROR),
    ("RESTORE_IN_PROGRESS", PENDING),
    ("RESTORE_COMPLETE", READY),
    ("RESTORE_FAILED", ERROR),
    ("ADOPT_IN_PROGRESS", PENDING),
    ("ADOPT_COMPLETE", READY),
    ("ADOPT_FAILED", ERROR),
]
ACTIONS = ("CREATE", "SUSPEND", "RESUME", "DELETE", "UPDATE", "CHECK", "ROLLBACK", "SNAPSHOT", "RESTORE", "ADOPT")


class TestStatus:
    def test_the_table_covers_every_action_and_status(self) -> None:
        expected = {f"{a}_{s}" for a in ACTIONS for s in ("IN_PROGRESS", "COMPLETE", "FAILED")}
        assert {row[0] for row in STATUS_TABLE} == expected
        assert len(STATUS_TABLE) == len(expected)

    @pytest.mark.parametrize(("stack_status", "state"), STATUS_TABLE)
    def test_each_stack_status_means_a_lab_state(self, stack_status: str, state: ObservedState) -> None:
        seen = status.observation(stack_status, "Resource CREATE failed: Quota exceeded for instances")
        assert seen.state == state
        assert seen.handle is None
        if state == PENDING:
            # Each action has its own wording: none falls back to the generic "Heat is busy".
            assert seen.message and not seen.message.startswith("Heat is busy")
            assert seen.progress == 0
        elif state in (READY, SUSPENDED):
            assert (seen.progress, seen.message) == (100, "")

    @pytest.mark.parametrize("action", ACTIONS)
    def test_failed_carries_heats_reason(self, action: str) -> None:
        reason = "Resource CREATE failed: Forbidden: Quota exceeded for instances: Requested 1, but already used 10"
        seen = status.observation(f"{action}_FAILED", reason)
        assert seen.state == ERROR
        assert seen.message == f"Heat {action.lower()} failed: {reason}"
        assert seen.progress == 0

    def test_delete_complete_is_gone(self) -> None:
        seen = status.observation("DELETE_COMPLETE", "Stack DELETE completed successfully")
        assert (seen.state, seen.progress, seen.message) == (GONE, 100, status.GONE_MESSAGE)

    def test_rollback_complete_is_an_error_saying_the_create_was_undone(self) -> None:
        seen = status.observation("ROLLBACK_COMPLETE", "Resource CREATE failed: No valid host was found")
        assert seen.state == ERROR
        assert seen.message == "The lab's creation failed and was rolled back: Resource CREATE failed: No valid host was found"

    def test_progress_counts_resources_done_with_the_action(self) -> None:
        resources = ["CREATE_COMPLETE", "CREATE_IN_PROGRESS", "CREATE_COMPLETE", "INIT_COMPLETE"]
        seen = status.observation("CREATE_IN_PROGRESS", "", resources)
        assert (seen.state, seen.progress, seen.message) == (PENDING, 50, "Creating the lab machines")
        assert status.observation("CREATE_IN_PROGRESS", "", ["CREATE_COMPLETE", "CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS"]).progress == 33
        assert status.observation("SUSPEND_IN_PROGRESS", "", ["SUSPEND_COMPLETE", "CREATE_COMPLETE"]).progress == 50
        assert status.observation("CREATE_IN_PROGRESS", "", []).progress == 0

    @pytest.mark.parametrize("action", ACTIONS)
    def test_progress_is_never_100_while_in_progress(self, action: str) -> None:
        seen = status.observation(f"{action}_IN_PROGRESS", "", [f"{action}_COMPLETE"] * 4)
        assert seen.state == PENDING
        assert seen.progress == 99

    @pytest.mark.parametrize(
        "stack_status",
        ["", "CREATE", "COMPLETE", "_COMPLETE", "CREATE_DONE", "create_complete", " CREATE_COMPLETE", "CREATE_COMPLETE ", "CREATE-COMPLETE"],
    )
    def test_a_malformed_status_raises(self, stack_status: str) -> None:
        with pytest.raises(ValueError, match="not a Heat stack status"):
            status.observation(stack_status)


# -- outputs ---------------------------------------------------------------------------------------------

GENERATED = Credentials(user="learner", password="gen-password", vnc_password="gen-vnc", private_key="GENERATED-KEY")


def _endpoints(raw: dict[str, object], protocol: str, generated: Credentials = GENERATED) -> list[DesktopEndpoint]:
    return outputs.endpoints(outputs.hosts_from_outputs(raw, protocol), protocol, generated)


class TestOutputs:
    def test_outputs_dict_from_heats_list_form(self) -> None:
        listed = [
            {"output_key": "public_ip", "output_value": "203.0.113.5", "description": "The desktop's address"},
            {"output_key": "hosts", "output_value": [{"name": "a", "address": "10.0.0.5"}]},
            {"output_key": "pending", "description": "no value yet"},
        ]
        assert outputs.outputs_dict(listed) == {
            "public_ip": "203.0.113.5",
            "hosts": [{"name": "a", "address": "10.0.0.5"}],
            "pending": None,
        }
        assert outputs.outputs_dict(None) == {}
        assert outputs.outputs_dict([]) == {}

    def test_single_machine_with_defaults(self) -> None:
        [host] = outputs.hosts_from_outputs({"public_ip": "203.0.113.5"}, "ssh")
        assert host == outputs.HeatHost(name="main", address="203.0.113.5", ports={"ssh": 22})
        [host] = outputs.hosts_from_outputs({"public_ip": "203.0.113.5"}, "vnc")
        assert host.ports == {"vnc": 5900}

    def test_single_machine_with_protocol_port_and_user(self) -> None:
        raw = {"public_ip": "203.0.113.5", "protocol": "rdp", "port": "3390", "user": "student"}
        assert _endpoints(raw, "rdp") == [
            DesktopEndpoint(protocol="rdp", host="203.0.113.5", port=3390, username="student", password="gen-password", name="main"),
        ]

    def test_single_machine_ssh_gets_the_generated_key(self) -> None:
        [endpoint] = _endpoints({"public_ip": "203.0.113.5"}, "ssh")
        assert (endpoint.protocol, endpoint.port, endpoint.username) == ("ssh", 22, "learner")
        assert endpoint.password == "gen-password"
        assert endpoint.extra == {"private-key": "GENERATED-KEY"}

    def test_no_generated_credentials_and_none_in_outputs(self) -> None:
        [endpoint] = _endpoints({"public_ip": "203.0.113.5"}, "ssh", Credentials())
        assert (endpoint.username, endpoint.password, dict(endpoint.extra)) == (None, None, {})

    def test_hosts_shape(self) -> None:
        raw = {
            "hosts": [
                {"name": "desktop", "address": "10.0.0.5", "ports": {"rdp": 3389, "ssh": 22}},
                {"name": "router", "address": "10.0.0.6", "ports": {"ssh": 2222}, "user": "admin", "password": "router-pw"},
                {"name": "console", "public_ip": "10.0.0.7", "ports": {"vnc": "5901"}},
            ],
            "user": "student",
        }
        hosts = outputs.hosts_from_outputs(raw, "rdp")
        assert [h.name for h in hosts] == ["desktop", "router", "console"]
        assert [dict(h.ports) for h in hosts] == [{"rdp": 3389, "ssh": 22}, {"ssh": 2222}, {"vnc": 5901}]
        desktop, router, console = outputs.endpoints(hosts, "rdp", GENERATED)
        # The default protocol where the host offers it...
        assert desktop == DesktopEndpoint("rdp", "10.0.0.5", 3389, "student", "gen-password", "desktop")
        # ...else the host's first protocol; the outputs' user and password win over the generated ones.
        assert router == DesktopEndpoint("ssh", "10.0.0.6", 2222, "admin", "router-pw", "router", {"private-key": "GENERATED-KEY"})
        # VNC has no user name and takes the VNC password.
        assert console == DesktopEndpoint("vnc", "10.0.0.7", 5901, None, "gen-vnc", "console")

    def test_hosts_on_ssh_by_default(self) -> None:
        raw = {"hosts": [{"name": "desktop", "address": "10.0.0.5", "ports": {"rdp": 3389, "ssh": 22}}]}
        [endpoint] = _endpoints(raw, "ssh")
        assert (endpoint.protocol, endpoint.port, dict(endpoint.extra)) == ("ssh", 22, {"private-key": "GENERATED-KEY"})

    def test_top_level_credentials_apply_to_every_host_unless_it_has_its_own(self) -> None:
        raw = {
            "hosts": [
                {"name": "a", "address": "10.0.0.5", "ports": {"ssh": 22}},
                {"name": "b", "address": "10.0.0.6", "ports": {"ssh": 22}, "user": "bob", "password": "b-pw", "private_key": "B-KEY"},
                {"name": "c", "address": "10.0.0.7", "ports": {"vnc": 5900}},
            ],
            "user": "top-user",
            "password": "top-pw",
            "private_key": "TOP-KEY",
        }
        a, b, c = _endpoints(raw, "ssh")
        assert (a.username, a.password, dict(a.extra)) == ("top-user", "top-pw", {"private-key": "TOP-KEY"})
        assert (b.username, b.password, dict(b.extra)) == ("bob", "b-pw", {"private-key": "B-KEY"})
        # An output password is the password of whatever the host serves, VNC included.
        assert (c.protocol, c.username, c.password, dict(c.extra)) == ("vnc", None, "top-pw", {})

    def test_generated_extra_is_kept(self) -> None:
        generated = Credentials(password="p", extra={"color-depth": "24"})
        [endpoint] = _endpoints({"public_ip": "203.0.113.5", "protocol": "rdp"}, "rdp", generated)
        assert dict(endpoint.extra) == {"color-depth": "24"}

    def test_a_host_without_a_name_is_main(self) -> None:
        [host] = outputs.hosts_from_outputs({"hosts": [{"address": "10.0.0.5"}]}, "ssh")
        assert (host.name, dict(host.ports)) == ("main", {"ssh": 22})

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ({}, "the stack has neither a 'public_ip' nor a 'hosts' output"),
            ({"private_ip": "10.0.0.5"}, "the stack has neither a 'public_ip' nor a 'hosts' output"),
            ({"hosts": []}, "output 'hosts': expected a non-empty list, got []"),
            ({"hosts": None}, "output 'hosts': expected a non-empty list, got None"),
            ({"hosts": {"name": "a"}}, "output 'hosts': expected a non-empty list, got {'name': 'a'}"),
            ({"hosts": ["10.0.0.5"]}, "output 'hosts[0]': expected a mapping, got '10.0.0.5'"),
            ({"hosts": [{"name": "a", "ports": {"ssh": 22}}]}, "output 'hosts[0]': no address (expected 'address' or 'public_ip')"),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5"}, {"name": "b", "address": ""}]},
                "output 'hosts[1]': no address (expected 'address' or 'public_ip')",
            ),
            ({"public_ip": None}, "output 'outputs': no address (expected 'address' or 'public_ip')"),
            ({"public_ip": "10.0.0.5", "protocol": "spice"}, "output 'outputs': unknown protocol 'spice' (known: ssh, rdp, vnc, telnet)"),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5", "ports": {"http": 80}}]},
                "output 'hosts[0]': unknown protocol 'http' (known: ssh, rdp, vnc, telnet)",
            ),
            ({"public_ip": "10.0.0.5", "port": 0}, "output 'outputs.ports.ssh': expected a TCP port 1-65535, got 0"),
            ({"public_ip": "10.0.0.5", "port": 70000}, "output 'outputs.ports.ssh': expected a TCP port 1-65535, got 70000"),
            ({"public_ip": "10.0.0.5", "port": "abc"}, "output 'outputs.ports.ssh': expected a TCP port 1-65535, got 'abc'"),
            ({"public_ip": "10.0.0.5", "port": None}, "output 'outputs.ports.ssh': expected a TCP port 1-65535, got None"),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5", "ports": {"rdp": 70000}}]},
                "output 'hosts[0].ports.rdp': expected a TCP port 1-65535, got 70000",
            ),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5", "ports": {}}]},
                "output 'hosts[0].ports': expected a mapping protocol -> port, got {}",
            ),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5", "ports": [{"protocol": "ssh", "port": 22}]}]},
                "output 'hosts[0].ports': expected a mapping protocol -> port, got [{'protocol': 'ssh', 'port': 22}]",
            ),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5"}, {"name": "b", "address": "10.0.0.6"}, {"name": "a", "address": "10.0.0.7"}]},
                "output 'hosts': host names repeat: ['a', 'b', 'a']",
            ),
            (
                {"hosts": [{"address": "10.0.0.5"}, {"address": "10.0.0.6"}]},
                "output 'hosts': host names repeat: ['main', 'main']",
            ),
            ({"public_ip": "10.0.0.5", "password": 1234}, "output 'outputs.password': expected a string, got int"),
            (
                {"hosts": [{"name": "a", "address": "10.0.0.5", "password": ["secret"]}]},
                "output 'hosts[0].password': expected a string, got list",
            ),
            ({"public_ip": "10.0.0.5", "user": 0}, "output 'outputs.user': expected a string, got int"),
            ({"public_ip": "10.0.0.5", "private_key": {"k": 1}}, "output 'outputs.private_key': expected a string, got dict"),
        ],
    )
    def test_outputs_breaking_the_contract_are_refused_saying_why(self, raw: dict[str, object], message: str) -> None:
        with pytest.raises(OutputError) as raised:
            outputs.hosts_from_outputs(raw, "ssh")
        assert str(raised.value) == message
        assert isinstance(raised.value, ValueError)

    @pytest.mark.parametrize("port", [1, 22, "22", 65535])
    def test_good_ports(self, port: object) -> None:
        [host] = outputs.hosts_from_outputs({"public_ip": "10.0.0.5", "port": port}, "ssh")
        assert host.ports == {"ssh": int(port)}


# -- parameters ------------------------------------------------------------------------------------------

SEED = "a-fixed-test-seed-of-some-length"


class TestParameters:
    def test_layers_site_then_entry_then_generated_for_declared_only(self) -> None:
        creds = derive(SEED, 7)
        generated = parameters.generated_values(7, "course-v1:OrgX+CS101", {"ssh": 22}, creds)
        chosen = parameters.stack_parameters(
            declared={"network", "flavor", "lab_id", "learner_public_key", "image"},
            site={"network": "lab-net", "flavor": "m1.small", "image": "debian-12"},
            entry={"flavor": "m1.large", "flavour": "m1.xlarge"},
            generated=generated,
        )
        assert chosen == {
            "network": "lab-net",  # the site's
            "flavor": "m1.large",  # the catalogue entry's wins over the site's
            "image": "debian-12",
            "flavour": "m1.xlarge",  # undeclared (misspelt) yet passed: Heat refuses it with its own message
            "lab_id": "lab-7",  # generated, declared
            "learner_public_key": creds.learner_public_key,
        }
        # Generated values the template does not declare are not passed.
        assert not {"course", "ports", "learner_password_hash", "service_public_key"} & set(chosen)

    def test_a_simple_template_gets_no_generated_values(self) -> None:
        generated = parameters.generated_values(7, "c", {"ssh": 22}, derive(SEED, 7))
        assert parameters.stack_parameters([], {"network": "n"}, {}, generated) == {"network": "n"}

    def test_the_broker_s_per_lab_values_win_for_declared_parameters(self) -> None:
        generated = parameters.generated_values(7, "c", {}, None)
        chosen = parameters.stack_parameters({"lab_id", "course"}, {"lab_id": "site"}, {"course": "entry"}, generated)
        assert chosen == {"lab_id": "lab-7", "course": "c"}

    def test_every_value_is_a_string(self) -> None:
        site = {"count": 3, "ratio": 0.5, "enabled": True, "disabled": False, "zones": ["a", "b"], "meta": {"k": 1}, "name": "x"}
        generated = parameters.generated_values(7, "c", {"ssh": 22, "rdp": 3389}, None)
        chosen = parameters.stack_parameters({"ports"}, site, {}, generated)
        assert all(isinstance(value, str) for value in chosen.values())
        assert chosen["count"] == "3"
        assert chosen["ratio"] == "0.5"
        assert chosen["enabled"] == "true"
        assert chosen["disabled"] == "false"
        assert json.loads(chosen["zones"]) == ["a", "b"]
        assert json.loads(chosen["meta"]) == {"k": 1}
        assert chosen["name"] == "x"
        assert json.loads(chosen["ports"]) == {"ssh": 22, "rdp": 3389}

    def test_generated_values(self) -> None:
        creds = derive(SEED, 7)
        values = parameters.generated_values(7, "course-v1:OrgX+CS101", {"ssh": 22}, creds)
        assert set(values) == set(parameters.GENERATED)
        assert values["lab_id"] == "lab-7"
        assert values["course"] == "course-v1:OrgX+CS101"
        assert json.loads(values["ports"]) == {"ssh": 22}
        assert values["learner_password_hash"] == creds.password_hash
        assert values["learner_password_hash"].startswith("$6$")
        assert values["learner_vnc_passwd_b64"] == creds.vnc_passwd_b64
        assert values["learner_public_key"] == creds.learner_public_key
        assert values["grader_public_key"] == values["service_public_key"] == creds.service_public_key
        assert parameters.generated_values(7, "", {}, None) == {"lab_id": "lab-7", "course": ""}

    @pytest.mark.parametrize("lab_id", [1, 7, 123456])
    def test_generated_values_hold_no_password_or_private_key(self, lab_id: int) -> None:
        creds = derive(SEED, lab_id)
        values = parameters.generated_values(lab_id, "c", {"ssh": 22, "vnc": 5900}, creds)
        secrets = (creds.password, creds.vnc_password, creds.learner_private_key, creds.service_private_key)
        for name, value in values.items():
            for secret in secrets:
                assert secret not in value, name
            assert "PRIVATE KEY" not in value, name
        for name in ("learner_public_key", "grader_public_key", "service_public_key"):
            assert values[name].startswith("ssh-ed25519 ")

    def test_lab_ports_from_catalogue_hosts_first_host_wins(self) -> None:
        hosts = [
            {"name": "desktop", "ports": [{"protocol": "ssh", "port": 22}, {"protocol": "rdp", "port": 3389}]},
            {"name": "router", "ports": [{"protocol": "ssh", "port": 2222}, {"protocol": "vnc", "port": "5901"}]},
            {"name": "bare"},
        ]
        assert parameters.lab_ports(hosts) == {"ssh": 22, "rdp": 3389, "vnc": 5901}
        assert parameters.lab_ports([]) == {}


# -- providers -------------------------------------------------------------------------------------------

KEYSTONE = {"auth_url": "https://keystone.example.org/v3", "username": "labdesk", "project_name": "labs", "password": "pw"}
TOKEN = {"endpoint": "http://heat.example.org:8004/v1/labs", "token": "t0ken"}
KNOWN = (
    "auth_url, username, password, user_id, project_name, project_id, user_domain_name, project_domain_name, "
    "application_credential_id, application_credential_name, application_credential_secret, endpoint, token, "
    "name, capacity, region, interface, verify, cacert, parameters"
)


class TestProviders:
    def test_one_implicit_default_provider_from_top_level_keys(self) -> None:
        config = {**TOKEN, "region": "RegionOne", "name_prefix": "labdesk", "parameters": {"network": "site-net"}}
        assert parse_providers(config) == [
            Provider(name="default", capacity=-1, auth=TOKEN, region="RegionOne", interface="public", verify=True, parameters={}),
        ]

    def test_several_providers_in_order_with_top_level_keys_as_defaults(self) -> None:
        config = {
            **KEYSTONE,
            "region": "RegionOne",
            "interface": "internal",
            "capacity": 5,
            "providers": [
                {"name": "cloud-b"},
                {"name": "cloud-a", "region": "RegionTwo", "capacity": 0, "auth_url": "https://other.example.org/v3"},
                {**TOKEN},
            ],
        }
        b, a, third = parse_providers(config)
        assert [b.name, a.name, third.name] == ["cloud-b", "cloud-a", "provider-3"]
        assert (b.region, b.interface, b.capacity, dict(b.auth)) == ("RegionOne", "internal", 5, KEYSTONE)
        assert (a.region, a.capacity, a.auth["auth_url"]) == ("RegionTwo", 0, "https://other.example.org/v3")
        assert a.auth["username"] == "labdesk"
        assert third.auth_kind == "token"

    def test_secrets_apply_to_their_provider_only(self) -> None:
        config = {
            "auth_url": KEYSTONE["auth_url"],
            "username": "labdesk",
            "project_name": "labs",
            "password": "shared-pw",  # a secret for every provider
            "cloud-b.password": "b-pw",  # a secret for cloud-b only
            "cloud-c.application_credential_secret": "c-secret",
            "providers": [
                {"name": "cloud-a"},
                {"name": "cloud-b"},
                {"name": "cloud-c", "application_credential_id": "c-id"},
                {"name": "cloud-bb"},
            ],
        }
        a, b, c, bb = parse_providers(config)
        assert a.auth["password"] == "shared-pw"
        assert b.auth["password"] == "b-pw"
        assert bb.auth["password"] == "shared-pw"
        assert c.auth["application_credential_secret"] == "c-secret"
        assert "application_credential_secret" not in a.auth and "application_credential_secret" not in b.auth
        assert c.auth_kind == "application_credential"

    def test_per_provider_parameters(self) -> None:
        config = {
            **TOKEN,
            "parameters": {"network": "site-net", "flavor": "m1.small"},
            "providers": [{"name": "a", "parameters": {"network": "a-net"}}, {"name": "b"}],
        }
        a, b = parse_providers(config)
        assert a.parameters == {"network": "a-net"}
        assert b.parameters == {}

    def test_verify_and_cacert(self) -> None:
        assert parse_providers({**TOKEN})[0].verify is True
        assert parse_providers({**TOKEN, "verify": False})[0].verify is False
        assert parse_providers({**TOKEN, "cacert": "/etc/ssl/cloud.pem"})[0].verify == "/etc/ssl/cloud.pem"

    @pytest.mark.parametrize(
        ("capacity", "stacks", "room"),
        [(-1, 0, True), (-1, 10**6, True), (0, 0, False), (3, 0, True), (3, 2, True), (3, 3, False), (3, 4, False)],
    )
    def test_capacity_and_has_room(self, capacity: int, stacks: int, room: bool) -> None:
        [provider] = parse_providers({**TOKEN, "capacity": capacity})
        assert provider.capacity == capacity
        assert provider.has_room(stacks) is room

    def test_capacity_defaults_to_unlimited(self) -> None:
        assert parse_providers(TOKEN)[0].capacity == providers.UNLIMITED == -1

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            (
                {"providers": [{"name": "a", **TOKEN, "regoin": "x", "pasword": "y"}]},
                f"heat backend: providers[0] (a): unknown keys ['pasword', 'regoin'] (known: {KNOWN})",
            ),
            ({**TOKEN, "capacity": -2}, "heat backend: providers[0] (default): capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got -2"),
            ({**TOKEN, "capacity": "5"}, "heat backend: providers[0] (default): capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got '5'"),
            ({**TOKEN, "capacity": True}, "heat backend: providers[0] (default): capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got True"),
            ({**TOKEN, "capacity": 2.0}, "heat backend: providers[0] (default): capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got 2.0"),
            (
                {**TOKEN, "providers": [{"name": "a"}, {"name": "b", "capacity": -5}]},
                "heat backend: providers[1] (b): capacity: expected -1 (unlimited), 0 (disabled) or a maximum, got -5",
            ),
            ({**TOKEN, "interface": "private"}, "heat backend: providers[0] (default): interface: expected one of public, internal, admin, got 'private'"),
            (
                {**TOKEN, "providers": [{"name": "a"}, {"name": "b"}, {"name": "a"}]},
                "heat backend: providers: names repeat: ['a', 'b', 'a']",
            ),
            ({**TOKEN, "providers": "cloud-a"}, "heat backend: providers: expected a list of tables"),
            ({**TOKEN, "providers": ["cloud-a"]}, "heat backend: providers: expected a list of tables"),
            (
                {**TOKEN, "providers": [{"name": "a", "parameters": "net"}]},
                "heat backend: providers[0] (a): parameters: expected a table of template parameters, got 'net'",
            ),
        ],
    )
    def test_bad_settings_are_refused_naming_the_key(self, config: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigError) as raised:
            parse_providers(config)
        assert str(raised.value) == message

    @pytest.mark.parametrize(
        ("auth", "message"),
        [
            ({}, "password authentication needs auth_url, password, username, project_name"),
            ({"auth_url": KEYSTONE["auth_url"], "username": "u", "project_id": "p"}, "password authentication needs password"),
            ({"auth_url": KEYSTONE["auth_url"], "password": "pw", "project_name": "p"}, "password authentication needs username"),
            ({"auth_url": KEYSTONE["auth_url"], "password": "pw", "user_id": "u"}, "password authentication needs project_name"),
            ({"username": "u", "password": "pw", "project_name": "p"}, "password authentication needs auth_url"),
            # An application credential whose secret was forgotten is still an application credential.
            (
                {"auth_url": KEYSTONE["auth_url"], "application_credential_id": "id"},
                "application_credential authentication needs application_credential_secret",
            ),
            ({"application_credential_secret": "s"}, "application_credential authentication needs application_credential_id, auth_url"),
            (
                {"application_credential_id": "id", "application_credential_secret": "s"},
                "application_credential authentication needs auth_url",
            ),
            (
                {"auth_url": KEYSTONE["auth_url"], "application_credential_name": "labdesk", "application_credential_secret": "s"},
                "application_credential authentication needs username",
            ),
            ({"endpoint": TOKEN["endpoint"]}, "token authentication needs token"),
            ({"token": "t0ken"}, "token authentication needs endpoint"),
            ({"endpoint": "", "token": "t0ken"}, "token authentication needs endpoint"),
        ],
    )
    def test_missing_authentication_pieces_are_named(self, auth: dict[str, str], message: str) -> None:
        with pytest.raises(ConfigError) as raised:
            parse_providers({**auth, "providers": [{"name": "cloud-a"}]})
        assert str(raised.value) == f"heat backend: providers[0] (cloud-a): {message}"

    @pytest.mark.parametrize(
        ("auth", "kind"),
        [
            (KEYSTONE, "password"),
            ({"auth_url": "u", "user_id": "u", "password": "p", "project_id": "p"}, "password"),
            ({"auth_url": "u", "application_credential_id": "i", "application_credential_secret": "s"}, "application_credential"),
            ({"auth_url": "u", "application_credential_name": "n", "application_credential_secret": "s", "user_id": "u"}, "application_credential"),
            (TOKEN, "token"),
        ],
    )
    def test_complete_authentication_is_accepted(self, auth: dict[str, str], kind: str) -> None:
        [provider] = parse_providers(auth)
        assert provider.auth_kind == kind
        assert dict(provider.auth) == auth


class TestKeystoneSession:
    def test_password_with_default_domains(self) -> None:
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        [provider] = parse_providers(KEYSTONE)
        made = keystone_session(provider, 12.5)
        assert isinstance(made, session.Session)
        assert made.timeout == 12.5
        assert made.verify is True
        assert isinstance(made.auth, v3.Password)
        assert made.auth.auth_url == KEYSTONE["auth_url"]
        assert (made.auth.project_name, made.auth.project_domain_name) == ("labs", "Default")
        [method] = made.auth.auth_methods
        assert (method.username, method.password, method.user_domain_name) == ("labdesk", "pw", "Default")
        # What Keystone is sent: a user name with its domain (without one Keystone answers 401).
        kind, body = method.get_auth_data(made, made.auth, {}, {})
        assert kind == "password"
        assert body == {"user": {"name": "labdesk", "password": "pw", "domain": {"name": "Default"}}}

    def test_password_with_given_domains_and_ids(self) -> None:
        [provider] = parse_providers({**KEYSTONE, "user_domain_name": "Users", "project_domain_name": "Labs", "cacert": "/ca.pem"})
        made = keystone_session(provider, 30)
        [method] = made.auth.auth_methods
        assert method.user_domain_name == "Users"
        assert made.auth.project_domain_name == "Labs"
        assert made.verify == "/ca.pem"

        [provider] = parse_providers({"auth_url": KEYSTONE["auth_url"], "user_id": "uid", "password": "pw", "project_id": "pid"})
        made = keystone_session(provider, 30)
        [method] = made.auth.auth_methods
        assert (method.user_id, method.user_domain_name) == ("uid", None)
        assert (made.auth.project_id, made.auth.project_domain_name) == ("pid", None)

    def test_application_credential(self) -> None:
        from keystoneauth1.identity import v3

        auth = {"auth_url": KEYSTONE["auth_url"], "application_credential_id": "ac-id", "application_credential_secret": "ac-secret"}
        [provider] = parse_providers(auth)
        made = keystone_session(provider, 5)
        assert made.timeout == 5.0
        assert isinstance(made.auth, v3.ApplicationCredential)
        [method] = made.auth.auth_methods
        assert (method.application_credential_id, method.application_credential_secret) == ("ac-id", "ac-secret")
        assert method.get_auth_data(made, made.auth, {}, {}) == ("application_credential", {"secret": "ac-secret", "id": "ac-id"})

    def test_application_credential_by_name_and_user(self) -> None:
        auth = {
            "auth_url": KEYSTONE["auth_url"],
            "application_credential_name": "labdesk",
            "application_credential_secret": "ac-secret",
            "username": "admin",
        }
        [provider] = parse_providers(auth)
        made = keystone_session(provider, 5)
        [method] = made.auth.auth_methods
        _, body = method.get_auth_data(made, made.auth, {}, {})
        assert body == {"secret": "ac-secret", "name": "labdesk", "user": {"name": "admin", "domain": {"name": "Default"}}}

    def test_token(self) -> None:
        from keystoneauth1 import token_endpoint

        [provider] = parse_providers({**TOKEN, "verify": False})
        made = keystone_session(provider, 20)
        assert made.timeout == 20.0
        assert made.verify is False
        assert isinstance(made.auth, token_endpoint.Token)
        assert (made.auth.endpoint, made.auth.token) == (TOKEN["endpoint"], "t0ken")
        assert made.get_token() == "t0ken"


# -- the stack request -----------------------------------------------------------------------------------


class TestStackRequest:
    def test_from_spec(self) -> None:
        heat = {
            "environment": "heat/lab.env.yaml",
            "parameters": {"flavor": "m1.large"},
            "providers": ["cloud-b", "cloud-a"],
            "hooks": {"after_resume": "hooks/clock.sh"},
        }
        spec = LabSpec(7, "linux-desktop", OWNER, _heat_entry(**heat), course="course-v1:OrgX+CS101", protocol="")
        assert StackRequest.from_spec(spec) == StackRequest(
            lab_id=7,
            template="heat/lab.yaml",
            environment="heat/lab.env.yaml",
            protocol="rdp",  # the first host's first port
            course="course-v1:OrgX+CS101",
            parameters={"flavor": "m1.large"},
            providers=["cloud-b", "cloud-a"],
            hooks={"after_resume": "hooks/clock.sh"},
            ports={"rdp": 3389, "ssh": 22},
        )

    def test_the_spec_s_protocol_wins(self) -> None:
        spec = LabSpec(7, "linux-desktop", OWNER, _heat_entry(), protocol="ssh")
        made = StackRequest.from_spec(spec)
        assert made.protocol == "ssh"
        assert (made.environment, made.providers, dict(made.parameters), dict(made.hooks)) == (None, None, {}, {})

    def test_ssh_without_hosts(self) -> None:
        spec = LabSpec(7, "bare", OWNER, {"backends": {"heat": {"template": "heat/lab.yaml"}}})
        made = StackRequest.from_spec(spec)
        assert (made.protocol, dict(made.ports)) == ("ssh", {})

    def test_json_round_trip(self) -> None:
        spec = LabSpec(7, "linux-desktop", OWNER, _heat_entry(parameters={"n": 2, "zones": ["a"]}, providers=["x"]), course="c")
        made = StackRequest.from_spec(spec)
        stored = json.loads(json.dumps(made.to_json()))
        assert StackRequest.from_json(stored) == made
        assert stored["lab_id"] == 7 and stored["ports"] == {"rdp": 3389, "ssh": 22}

    @pytest.mark.parametrize(
        "params",
        [
            {"hosts": [{"name": "main", "ports": [{"protocol": "ssh", "port": 22}]}]},
            {"backends": {}},
            {"backends": {"libvirt": {"domain": "x"}}},
            {"backends": {"heat": {}}},
            {"backends": {"heat": {"template": ""}}},
            {"backends": {"heat": "heat/lab.yaml"}},
            {"backends": ["heat"]},
        ],
    )
    def test_an_image_without_backends_heat_is_refused(self, params: dict[str, object]) -> None:
        with pytest.raises(PermanentError) as raised:
            StackRequest.from_spec(LabSpec(7, "win11", OWNER, params))
        assert str(raised.value) == "image 'win11' has no [backends.heat] template"
        assert raised.value.user_message == request.MISSING


# -- errors ----------------------------------------------------------------------------------------------


def _heat_body(message: str) -> str:
    """An error body as Heat's fault middleware writes it."""
    return json.dumps({"explanation": "x", "code": 400, "error": {"message": message, "type": "StackValidationFailed"}, "title": "Bad Request"})


def _heat(name: str, *args: object) -> Exception:
    from heatclient import exc

    return getattr(exc, name)(*args)


def _keystone(name: str, *args: object) -> Exception:
    from keystoneauth1 import exceptions as ks

    return getattr(ks, name)(*args)


LEARNER_MESSAGES = {
    PermanentError: {REFUSED, MISCONFIGURED},
    CapacityError: {"No lab machine is free right now."},
    TransientError: {BUSY},
}


class TestHeatErrors:
    def test_not_found_is_stack_not_found(self) -> None:
        with pytest.raises(StackNotFound):
            with heat_errors("cloud-a", "reading the stack"):
                raise _heat("HTTPNotFound")
        with pytest.raises(StackNotFound, match="Stack labdesk-lab-7 not found"):
            with heat_errors("cloud-a", "reading the stack"):
                raise _heat("HTTPNotFound", json.dumps({"error": {"message": "Stack labdesk-lab-7 not found"}}))

    @pytest.mark.parametrize(
        ("make", "kind", "middle", "user_message"),
        [
            (lambda: _heat("HTTPBadRequest"), PermanentError, "refused: ", REFUSED),
            (lambda: _heat("HTTPBadRequest", _heat_body("Property error: flavor m1.huge not found")), PermanentError, "refused: ", REFUSED),
            (lambda: _heat("HTTPUnauthorized"), PermanentError, "credentials refused: ", MISCONFIGURED),
            (lambda: _heat("HTTPForbidden"), PermanentError, "credentials refused: ", MISCONFIGURED),
            (lambda: _heat("HTTPOverLimit"), CapacityError, "over limit: ", "No lab machine is free right now."),
            (lambda: _heat("HTTPConflict"), TransientError, "HTTP 409: ", BUSY),
            (lambda: _heat("HTTPServiceUnavailable"), TransientError, "HTTP 503: ", BUSY),
            (lambda: _heat("HTTPInternalServerError"), TransientError, "HTTP 500: ", BUSY),
            (lambda: _keystone("ConnectFailure", "Unable to establish connection to http://10.0.0.9:8004"), TransientError, "ConnectFailure: ", BUSY),
            (lambda: _keystone("ConnectTimeout", "Request to http://10.0.0.9:8004 timed out"), TransientError, "ConnectTimeout: ", BUSY),
            (lambda: _keystone("Unauthorized", "The request you have made requires authentication."), PermanentError, "credentials refused: ", MISCONFIGURED),
            (lambda: _keystone("Forbidden"), PermanentError, "credentials refused: ", MISCONFIGURED),
            (lambda: _heat("HTTPBadRequest", _heat_body("You have reached the maximum stacks per tenant, 100.")), CapacityError, "", "No lab machine is free right now."),
            (lambda: _keystone("EndpointNotFound", "internal endpoint for orchestration service in R9 region not found"), PermanentError, "no Heat endpoint: ", MISCONFIGURED),
        ],
    )
    def test_each_failure_becomes_a_broker_error(self, make, kind: type, middle: str, user_message: str) -> None:
        error = make()
        with pytest.raises(kind) as raised:
            with heat_errors("cloud-a", "creating stack labdesk-lab-7"):
                raise error
        assert type(raised.value) is kind
        text = str(raised.value)
        assert text.startswith(f"heat provider cloud-a: creating stack labdesk-lab-7: {middle}")
        assert text.endswith(" ".join(str(error).split()))
        # What a learner may read: a fixed sentence, without the cloud's name, addresses or Heat's text.
        assert raised.value.user_message == user_message
        assert raised.value.user_message in LEARNER_MESSAGES[kind]
        for leak in ("cloud-a", "http", "HTTP", "ERROR", "labdesk-lab-7", "10.0.0.9"):
            assert leak not in raised.value.user_message
        assert raised.value.__cause__ is None and raised.value.__suppress_context__

    def test_heats_message_is_in_the_admin_message(self) -> None:
        with pytest.raises(PermanentError) as raised:
            with heat_errors("cloud-b", "creating stack labdesk-lab-7"):
                raise _heat("HTTPBadRequest", _heat_body("Property error:\n   flavor m1.huge   not found"))
        assert str(raised.value) == "heat provider cloud-b: creating stack labdesk-lab-7: refused: ERROR: Property error: flavor m1.huge not found"

    def test_a_long_error_is_cut(self) -> None:
        with pytest.raises(TransientError) as raised:
            with heat_errors("cloud-a", "listing stacks"):
                raise _keystone("ConnectFailure", "x" * 2000)
        assert str(raised.value) == "heat provider cloud-a: listing stacks: ConnectFailure: " + "x" * 500

    def test_other_exceptions_pass_through(self) -> None:
        with pytest.raises(KeyError):
            with heat_errors("cloud-a", "reading the stack"):
                raise KeyError("stack")

    def test_success_passes(self) -> None:
        with heat_errors("cloud-a", "reading the stack"):
            value = 1
        assert value == 1


def test_a_prefix_that_could_be_another_installations_lab_tag_is_refused() -> None:
    for prefix in ("labdesk-lab-5", "campus-course-x"):
        with pytest.raises(ValueError, match="must not contain '-lab-' or '-course-'"):
            naming.check_prefix(prefix)


def test_a_failure_without_a_reason_reads_as_a_sentence() -> None:
    assert status.observation("SUSPEND_FAILED").message == "Heat suspend failed"


def test_a_boolean_port_output_is_refused() -> None:
    with pytest.raises(outputs.OutputError, match=r"expected a TCP port 1-65535, got True"):
        outputs.hosts_from_outputs({"public_ip": "192.0.2.1", "port": True}, "ssh")
