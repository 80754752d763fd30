"""broker/vagrantfile.py: filling a Vagrantfile template with Ruby literals, and the safety property checked
with the real Ruby interpreter: a value is always exactly that value, never code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from broker.vagrantfile import TemplateError, placeholders, port_placeholders, provider_block, render, ruby_literal

RUBY = shutil.which("ruby")
needs_ruby = pytest.mark.skipif(RUBY is None, reason="ruby is not installed (Debian's vagrant package depends on it)")


def ruby(tmp_path: Path, source: str) -> subprocess.CompletedProcess[bytes]:
    """Run `source` as a Ruby file (as Vagrant loads a Vagrantfile: a UTF-8 source file)."""
    script = tmp_path / "script.rb"
    script.write_text(source, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    return subprocess.run([RUBY or "ruby", str(script)], capture_output=True, timeout=20, env=env, cwd=tmp_path)


# -- ruby_literal ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, literal", [
    ("libvirt", "'libvirt'"),
    ("it's", "'it\\'s'"),
    ("back\\slash", "'back\\\\slash'"),
    ("", "''"),
    ('say "#{x}"', "'say \"#{x}\"'"),
    (42, "42"),
    (-3, "-3"),
    (0, "0"),
    (1.5, "1.5"),
    (True, "true"),
    (False, "false"),
    (None, "nil"),
    (["a", 1, None, True], "['a', 1, nil, true]"),
    ((8080, "x'y"), "[8080, 'x\\'y']"),
    ([], "[]"),
    ([["nested"]], "[['nested']]"),
])
def test_ruby_literal(value: object, literal: str) -> None:
    assert ruby_literal(value) == literal


def test_a_bool_is_not_written_as_a_number() -> None:
    assert ruby_literal(True) != "1" and ruby_literal(False) != "0"


@pytest.mark.parametrize("value", ["nul\0byte", {"a": 1}, object(), b"bytes", ["ok", {"no": 1}]])
def test_what_cannot_be_a_ruby_literal_is_refused(value: object) -> None:
    with pytest.raises(TemplateError):
        ruby_literal(value)


# -- render ---------------------------------------------------------------------------------------------------
TEMPLATE = """Vagrant.configure("2") do |config|
  config.vm.box = ${BOX}
  config.vm.provider :libvirt do |lv|
    lv.memory = ${MEMORY_MB}
  end
  config.vm.network :forwarded_port, guest: 22, host: ${SSH_PORT}, host_ip: ${HOST_IP}
  config.vm.box = ${BOX}
  hosted = ${HOSTED}
end
"""


def test_render_replaces_each_placeholder_by_its_literal() -> None:
    out = render(TEMPLATE, {"BOX": "lab/tiny", "MEMORY_MB": 512, "SSH_PORT": 42001, "HOST_IP": "127.0.0.1",
                            "HOSTED": True})
    assert "${" not in out
    assert out.count("config.vm.box = 'lab/tiny'") == 2
    assert "lv.memory = 512\n" in out
    assert "host: 42001, host_ip: '127.0.0.1'" in out
    assert "hosted = true\n" in out


def test_render_leaves_the_rest_of_the_template_alone() -> None:
    template = 'x = "#{ENV[\'HOME\']}" # ${lower} $HOME\ny = ${Y}\n'
    assert render(template, {"Y": 1}) == 'x = "#{ENV[\'HOME\']}" # ${lower} $HOME\ny = 1\n'


def test_render_ignores_values_the_template_does_not_use() -> None:
    assert render("a = ${A}\n", {"A": 1, "UNUSED_PORT": 42000}) == "a = 1\n"


def test_render_refuses_placeholders_nobody_fills_naming_them_all() -> None:
    with pytest.raises(TemplateError) as caught:
        render(TEMPLATE, {"BOX": "lab/tiny", "HOSTED": False})
    message = str(caught.value)
    for name in ("MEMORY_MB", "SSH_PORT", "HOST_IP"):
        assert name in message
    assert "BOX" not in message and "HOSTED" not in message  # filled ones are not blamed


def test_placeholders_in_order_of_first_use() -> None:
    assert placeholders(TEMPLATE) == ["BOX", "MEMORY_MB", "SSH_PORT", "HOST_IP", "HOSTED"]


def test_port_placeholders() -> None:
    template = "${SSH_PORT} ${BOX} ${RDP_PORT} ${SSH_PORT} ${PORTAL} ${PORT_COUNT} ${TUNNEL2_PORT} ${MEMORY_MB}"
    assert port_placeholders(template) == ["SSH_PORT", "RDP_PORT", "TUNNEL2_PORT"]
    assert port_placeholders("config.vm.box = ${BOX}") == []


# -- provider_block -------------------------------------------------------------------------------------------
def test_provider_block_assigns_each_setting() -> None:
    block = provider_block("libvirt", {"uri": "qemu:///system", "memory": 512, "nested": True},
                           {"ssh.private_key_path": "/k"})
    lines = block.splitlines()
    assert lines[0] == 'Vagrant.configure("2") do |config|'
    assert "  config.ssh.private_key_path = '/k'" in lines
    assert "  config.vm.provider 'libvirt' do |p|" in lines
    assert "    p.uri = 'qemu:///system'" in lines
    assert "    p.memory = 512" in lines
    assert "    p.nested = true" in lines
    assert lines[-2:] == ["  end", "end"]


@pytest.mark.parametrize("name", [
    "uri = 'x'; system('id')", "uri\nsystem('id')", "a b", "a-b", "a'b", 'a"b', "Uri", "1st", "", "a.", ".a",
    "a..b", "a(1)", "a;b", "p.uri=", "a#b",
])
def test_provider_block_refuses_names_that_are_not_plain_settings(name: str) -> None:
    with pytest.raises(TemplateError):
        provider_block("libvirt", {name: 1})
    with pytest.raises(TemplateError):
        provider_block("libvirt", {}, {name: 1})
    with pytest.raises(TemplateError):
        provider_block(name, {})


# -- with the real Ruby -----------------------------------------------------------------------------------------
def nasty(tmp_path: Path) -> list[str]:
    pwned = tmp_path / "pwned"
    return [
        "it's",
        "back\\slash",
        f'#{{system("touch {pwned}")}}',
        f"a'; system(\"touch {pwned}\"); '",
        f"\\'; system(\"touch {pwned}\") #",
        f"a\\\\'; `touch {pwned}`; '",
        "ünïcödé ✓ 日本語",
        "trailing backslash\\",
        "\\",
        "'",
        "new\nline",
        "tab\tand\rcarriage",
        '"double" #{1+1} %q(x) \\n \\t \\x41 \\u0041',
        "",
    ]


@needs_ruby
def test_every_string_literal_reads_back_as_itself_and_runs_nothing(tmp_path: Path) -> None:
    for value in nasty(tmp_path):
        done = ruby(tmp_path, f"v = {ruby_literal(value)}\nSTDOUT.write v\n")
        assert done.returncode == 0, (value, done.stderr.decode())
        assert done.stdout == value.encode("utf-8"), value
    assert not (tmp_path / "pwned").exists()


@needs_ruby
def test_rendered_values_read_back_through_ruby(tmp_path: Path) -> None:
    values = {"S": nasty(tmp_path), "N": 42, "F": 1.5, "BIG": 10**20, "NEG": -7, "T": True, "NIL": None}
    source = render("require 'json'\nv = {s: ${S}, n: ${N}, f: ${F}, big: ${BIG}, neg: ${NEG}, t: ${T}, nil: ${NIL}}\n"
                    "STDOUT.write JSON.generate(v)\n", values)
    done = ruby(tmp_path, source)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == {"s": values["S"], "n": 42, "f": 1.5, "big": 10**20, "neg": -7, "t": True,
                                       "nil": None}
    assert not (tmp_path / "pwned").exists()


@needs_ruby
@pytest.mark.parametrize("number", [0.1, 1e20, 1e-05, 2.5e-300, 123456789.125, -0.5])
def test_floats_read_back_as_the_same_number(tmp_path: Path, number: float) -> None:
    done = ruby(tmp_path, f"STDOUT.write({ruby_literal(number)}.to_s)\n")
    assert done.returncode == 0, done.stderr.decode()
    assert float(done.stdout) == number


@needs_ruby
@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_a_float_ruby_cannot_read_is_refused_or_written_so_it_can(tmp_path: Path, number: float) -> None:
    """A catalogue value or an admin's provider option (JSON as Python reads it accepts Infinity and NaN)
    must fail with a TemplateError, not with a Ruby NameError at `vagrant up`."""
    try:
        literal = ruby_literal(number)
    except TemplateError:
        return
    done = ruby(tmp_path, f"v = {literal}\nSTDOUT.write v.to_s\n")
    assert done.returncode == 0, f"{number!r} became {literal!r}: {done.stderr.decode().strip()}"


@needs_ruby
def test_a_provider_block_only_ever_assigns(tmp_path: Path) -> None:
    """The block run against a recording stand-in for Vagrant's config: exactly the settings, exact values."""
    options = {"uri": "qemu:///system", "storage_pool_name": nasty(tmp_path)[2], "memory": 512, "nested": False,
               "default_prefix": "it's-"}
    recorder = """
require 'json'
$seen = {}
class Rec
  def initialize(path) ; @path = path ; end
  def respond_to_missing?(*) ; true ; end
  def method_missing(name, *args, &block)
    name = name.to_s
    if name.end_with?("=")
      $seen[(@path + [name.chomp("=")]).join(".")] = args[0]
    elsif name == "provider"
      $seen["provider"] = args[0]
      block.call(Rec.new(["p"]))
    else
      Rec.new(@path + [name])
    end
  end
end
module Vagrant
  def self.configure(version)
    $seen["version"] = version
    yield Rec.new(["config"])
  end
end
"""
    block = provider_block("libvirt", options, {"ssh.private_key_path": "/k'"})
    done = ruby(tmp_path, recorder + block + "STDOUT.write JSON.generate($seen)\n")
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == {
        "version": "2", "config.ssh.private_key_path": "/k'", "provider": "libvirt",
        **{f"p.{key}": value for key, value in options.items()},
    }
    assert not (tmp_path / "pwned").exists()
