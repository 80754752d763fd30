"""`records.parse` and its readers on the outputs recorded from a real Vagrant 2.3.4 + vagrant-libvirt 0.11.2
(recorded/*.txt). No Vagrant is run: every expected value below is read off the recorded text."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.vagrant import records
from connectors.vagrant.records import BoxEntry, GlobalEntry

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> records.Output:
    return records.parse((RECORDED / name).read_text())


# -- vagrant status ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, state", [
    ("status-running.txt", "running"),
    ("status-paused.txt", "paused"),
    ("status-shutoff.txt", "shutoff"),
    ("status-not-created.txt", "not_created"),
    # suspend_mode managedsave: the domain is saved to disk and shut off; only LabDesk's own record tells it
    # from a machine powered off (lab.json "suspended")
    ("status-managedsaved.txt", "shutoff"),
])
def test_status_gives_vagrants_state_id_per_machine(name: str, state: str) -> None:
    assert list(records.states(recorded(name)).values()) == [state]  # one machine per recording


def test_status_ignores_the_human_readable_state_and_the_ui_text() -> None:
    output = recorded("status-not-created.txt")
    # the short human text is "not created" (with a space); the id is what a caller compares against
    assert records.states(output)["lab1"] == "not_created"
    assert [record.value for record in output.of("state-human-short")] == ["not created"]


def test_a_value_holding_escaped_commas_and_newlines_is_one_unescaped_value() -> None:
    long = recorded("status-running.txt").of("state-human-long")
    assert [record.data for record in long] == [(
        "The Libvirt domain is running. To stop this machine, you can run\n"
        "`vagrant halt`. To destroy the machine, you can run `vagrant destroy`.",
    )]


def test_every_line_of_a_recorded_status_is_a_record() -> None:
    output = recorded("status-paused.txt")
    assert len(output.records) == 6
    assert output.text == ""
    assert output.records[0] == records.Record(1796620561, "lab1", "metadata", ("provider", "libvirt"))


# -- error-exit ---------------------------------------------------------------------------------------------
def test_error_exit_of_a_locked_machine() -> None:
    found = records.error_exit(recorded("error-locked.txt"))
    assert found is not None
    kind, message = found
    assert kind == "Vagrant::Errors::MachineActionLockedError"
    assert message.startswith(
        "An action 'suspend' was attempted on the machine 'lab1',\n"
        "but another process is already executing an action on the machine.\n")
    assert message.endswith('listing for any "ruby" or "vagrant" processes and kill them. Then\ntry again.')
    assert "VAGRANT_COMMA" not in message and "\\n" not in message


def test_error_exit_of_a_missing_box() -> None:
    found = records.error_exit(recorded("error-box-not-found.txt"))
    assert found is not None
    kind, message = found
    assert kind == "Vagrant::Errors::BoxAddShortNotFound"
    assert message.startswith("The box 'lab/missing' could not be found or\ncould not be accessed")
    assert "box on HashiCorp's Vagrant Cloud, please verify you're logged in via\n`vagrant login`. Also, please" in message
    assert message.endswith('URL: ["https://vagrantcloud.com/api/v2/vagrant/lab/missing"]\n'
                            "Error: Could not resolve host: vagrantcloud.com")
    assert "VAGRANT_COMMA" not in message and "\\n" not in message


def test_an_up_that_failed_still_shows_its_action_start() -> None:
    output = recorded("error-box-not-found.txt")
    assert [(r.target, r.data) for r in output.of("action")] == [("lab1", ("up", "start"))]


@pytest.mark.parametrize("name", ["status-running.txt", "up.txt", "destroy.txt", "ssh-config.txt", "box-list.txt"])
def test_a_successful_output_has_no_error_exit(name: str) -> None:
    assert records.error_exit(recorded(name)) is None


def test_an_early_failure_is_plain_text_without_records() -> None:
    raw = (RECORDED / "error-syntax.txt").read_text()
    output = records.parse(raw)
    assert output.records == ()
    assert records.error_exit(output) is None
    assert output.text.startswith("Vagrant failed to initialize at a very early stage:")
    assert "There is a syntax error in the following Vagrantfile." in output.text
    assert "/tmp/vrec/syntax/Vagrantfile:2: syntax error, unexpected end-of-input" in output.text
    assert output.text == raw.strip()


# -- vagrant ssh-config -------------------------------------------------------------------------------------
def test_ssh_config_of_the_machine() -> None:
    output = recorded("ssh-config.txt")
    configs = records.ssh_configs(output)
    assert list(configs) == ["lab1"]
    config = configs["lab1"]
    assert config.host == "127.0.0.1"
    assert config.port == 2222
    assert config.user == "root"
    assert config.identity_files == ("/tmp/vrec/home/insecure_private_key",)


def test_ssh_configs_plain_text_copy_is_kept_as_text_not_read_as_records() -> None:
    output = recorded("ssh-config.txt")
    assert [record.kind for record in output.records] == ["metadata", "ssh-config"]
    assert output.text.startswith("Host lab1\n  HostName 127.0.0.1")
    assert output.text.endswith("LogLevel FATAL")


def test_ssh_config_reads_quoted_identity_files_and_several_of_them() -> None:
    value = ("Host lab1\\n  HostName 10.0.0.5\\n  User vagrant\\n  Port 22\\n"
             '  IdentityFile "/srv/a b/key"\\n  IdentityFile /srv/other\\n')
    config = records.ssh_configs(records.parse(f"1,lab1,ssh-config,{value}\n"))["lab1"]
    assert config == records.SshConfig("10.0.0.5", 22, "vagrant", ("/srv/a b/key", "/srv/other"))


# -- vagrant global-status ----------------------------------------------------------------------------------
def test_global_status_lists_each_machine() -> None:
    assert records.global_status(recorded("global-status.txt")) == [
        GlobalEntry(id="36a88da", provider="libvirt", state="running", directory="/tmp/vrec/proj")]


def test_global_status_of_two_machines_keeps_their_fields_apart() -> None:
    text = "\n".join([
        "1,,metadata,machine-count,2",
        "1,,machine-id,aaa1111", "1,,provider-name,libvirt", "1,,machine-home,/srv/a", "1,,state,running",
        "1,,machine-id,bbb2222", "1,,provider-name,libvirt", "1,,machine-home,/srv/b", "1,,state,shutoff",
    ])
    assert records.global_status(records.parse(text)) == [
        GlobalEntry("aaa1111", "libvirt", "running", "/srv/a"), GlobalEntry("bbb2222", "libvirt", "shutoff", "/srv/b")]


# -- vagrant box list / box add ---------------------------------------------------------------------------
def test_box_list() -> None:
    assert records.boxes(recorded("box-list.txt")) == [BoxEntry("lab/tiny", "libvirt", "0")]


def test_box_list_of_several_versions() -> None:
    assert records.boxes(recorded("box-list-versions.txt")) == [
        BoxEntry("lab/meta", "libvirt", "1.0.0"), BoxEntry("lab/meta", "libvirt", "1.1.0"),
        BoxEntry("lab/tiny", "libvirt", "0"), BoxEntry("lab/web", "libvirt", "0")]


def test_box_add_prints_no_box_records() -> None:
    output = recorded("box-add.txt")
    assert records.boxes(output) == []
    # its progress line's escaped comma is one value
    details = [record.data[1] for record in output.of("ui") if record.value == "detail" and not record.target]
    assert details == ["Progress: 0% (Rate: 0/s, Estimated time remaining: --:--:--)"]


# -- actions ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, action", [
    ("up.txt", "up"), ("suspend.txt", "suspend"), ("suspend-managedsave.txt", "suspend"),
    ("resume.txt", "resume"), ("halt.txt", "halt"), ("destroy.txt", "destroy"), ("destroy-not-created.txt", "destroy"),
])
def test_each_action_has_its_start_and_end(name: str, action: str) -> None:
    output = recorded(name)
    assert [(r.target, r.data) for r in output.of("action")] == [("lab1", (action, "start")), ("lab1", (action, "end"))]
    assert output.text == ""


def test_ui_lines_with_several_escaped_commas_stay_whole() -> None:
    lines = [record.data[1] for record in recorded("up.txt").of("ui") if "Image(vda)" in record.data[1]]
    assert lines == ["==> lab1:  -- Image(vda):        /var/tmp/vrecpool/proj_lab1.img, virtio, 1G"]


def test_timestamps_are_read() -> None:
    actions = recorded("up.txt").of("action")
    assert [record.timestamp for record in actions] == [1796620402, 1796620544]


# -- for_machine ----------------------------------------------------------------------------------------------
def test_for_machine_picks_the_named_machine() -> None:
    found = {"labdesk-lab-1": "running", "labdesk-lab-2": "shutoff"}
    assert records.for_machine(found, "labdesk-lab-2") == "shutoff"


def test_for_machine_takes_the_only_machine_of_a_vagrantfile_that_names_it_otherwise() -> None:
    # the recorded machine is "lab1": a template naming its machine differently still gives its state
    assert records.for_machine(records.states(recorded("status-paused.txt")), "labdesk-lab-7") == "paused"


def test_for_machine_is_none_when_ambiguous_or_empty() -> None:
    assert records.for_machine({"web": "running", "db": "shutoff"}, "labdesk-lab-7") is None
    assert records.for_machine({}, "labdesk-lab-7") is None


# -- malformed lines ---------------------------------------------------------------------------------------------
def test_lines_that_are_not_records_are_kept_as_text_in_order() -> None:
    text = "\n".join([
        "1796620557,lab1,state,running",
        "not a record at all",
        "abc,lab1,state,paused",     # timestamp is not a number
        "1796620557,lab1",           # no type
        "1796620557,lab1,,running",  # empty type
        "1796620557,lab1,metadata,provider,libvirt",
    ])
    output = records.parse(text)
    assert [(r.kind, r.data) for r in output.records] == [
        ("state", ("running",)), ("metadata", ("provider", "libvirt"))]
    assert output.text == "not a record at all\nabc,lab1,state,paused\n1796620557,lab1\n1796620557,lab1,,running"
    assert records.states(output) == {"lab1": "running"}


def test_a_record_with_no_data() -> None:
    output = records.parse("1796620557,lab1,ping\n")
    assert output.records == (records.Record(1796620557, "lab1", "ping", ()),)
    assert output.records[0].value == ""


def test_empty_output() -> None:
    output = records.parse("")
    assert output.records == () and output.text == ""
    assert records.states(output) == {} and records.error_exit(output) is None
