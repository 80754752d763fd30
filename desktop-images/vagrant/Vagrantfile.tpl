# LabDesk: the Vagrantfile template the Vagrant connector fills, one directory per lab (docs/images.md).
#
# PLACEHOLDERS (plain text substitution; the connector writes numbers as numbers and puts every other
# value inside the single quotes below, so it must refuse values containing ' \ or a newline):
#   ${LAB_ID}                  opaque lab id, [A-Za-z0-9-]{1,63}: the VM's name and host name
#   ${BOX}                     box name from the catalogue (backends.vagrant.box), e.g. labdesk/debian-lab-desktop
#   ${MEMORY_MB}  ${CPUS}      resources.ram_mb and resources.vcpu of the catalogue entry
#   ${HOST_IP}                 host address the forwarded ports listen on (where guacd connects), e.g. 127.0.0.1
#   ${SSH_PORT}                host port forwarded to the guest's 22 (also Vagrant's own SSH)
#   ${RDP_PORT}  ${VNC_PORT}   host ports forwarded to 3389 and 5901; 0 = not forwarded (terminal labs)
#   ${LEARNER_PASSWORD_HASH}   crypt(3) hash of the per-lab learner password ("$6$…")
#   ${LEARNER_VNC_PASSWD_B64}  base64 of the TigerVNC ~/.vnc/passwd file, or empty (no VNC)
#   ${GRADER_PUBLIC_KEY}       OpenSSH public key of the grader account (the broker holds the private key)
# The same values as the cloud-init template (recipes/debian-lab/cloud-init/user-data.yaml): a box has
# no cloud-init datasource, so the provisioner below injects them over Vagrant's SSH instead.
#
# The box is a debian-lab image (recipes/debian-lab/build-image.sh) with Vagrant's "vagrant" user added
# when it is packaged (docs/images.md, "Vagrant boxes").

Vagrant.configure("2") do |config|
  config.vm.box = '${BOX}'
  config.vm.hostname = '${LAB_ID}'
  config.vm.synced_folder ".", "/vagrant", disabled: true

  host_ip = '${HOST_IP}'
  config.vm.network "forwarded_port", id: "ssh", guest: 22, host: ${SSH_PORT}, host_ip: host_ip, auto_correct: false
  rdp_port = ${RDP_PORT}
  vnc_port = ${VNC_PORT}
  config.vm.network "forwarded_port", id: "rdp", guest: 3389, host: rdp_port, host_ip: host_ip if rdp_port > 0
  config.vm.network "forwarded_port", id: "vnc", guest: 5901, host: vnc_port, host_ip: host_ip if vnc_port > 0

  config.vm.provider "libvirt" do |lv|
    lv.default_prefix = "labdesk-"
    lv.memory = ${MEMORY_MB}
    lv.cpus = ${CPUS}
    lv.channel :type => "unix", :target_name => "org.qemu.guest_agent.0", :target_type => "virtio"
  end
  config.vm.provider "virtualbox" do |vb|
    vb.name = "labdesk-${LAB_ID}"
    vb.memory = ${MEMORY_MB}
    vb.cpus = ${CPUS}
  end

  # Credentials, once per VM: the image itself has none (docs/images.md, "Users").
  config.vm.provision "labdesk-credentials", type: "shell", run: "once", privileged: true,
    env: {
      "LEARNER_PASSWORD_HASH" => '${LEARNER_PASSWORD_HASH}',
      "LEARNER_VNC_PASSWD_B64" => '${LEARNER_VNC_PASSWD_B64}',
      "GRADER_PUBLIC_KEY" => '${GRADER_PUBLIC_KEY}',
    },
    inline: <<-'SHELL'
      set -eu
      usermod --password "$LEARNER_PASSWORD_HASH" learner
      install -d -o grader -g grader -m 0700 /home/grader/.ssh
      printf '%s\n' "$GRADER_PUBLIC_KEY" > /home/grader/.ssh/authorized_keys
      chown grader:grader /home/grader/.ssh/authorized_keys
      chmod 0600 /home/grader/.ssh/authorized_keys
      if [ -n "$LEARNER_VNC_PASSWD_B64" ] && [ -d /home/learner/.vnc ]; then
        printf '%s' "$LEARNER_VNC_PASSWD_B64" | base64 -d > /home/learner/.vnc/passwd
        chown learner:learner /home/learner/.vnc/passwd
        chmod 0600 /home/learner/.vnc/passwd
        systemctl restart tigervncserver@:1.service || true
      fi
    SHELL
end
