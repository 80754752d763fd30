# LabDesk: the Vagrantfile of a debian-lab box, hosted by LabDesk or taken home (docs/vagrant.md).
#
# Each placeholder below is replaced by a Ruby literal ('text', 42, true, nil), never inside quotes:
#   ${LAB_NAME}                 the machine's name and host name (labdesk-lab-<id> hosted; the image id taken away)
#   ${BOX} ${BOX_VERSION}       the catalogue's box and version constraint (nil: the newest installed)
#   ${MEMORY_MB} ${CPUS}        resources.ram_mb and resources.vcpu
#   ${HOST_IP}                  where the forwarded ports listen (guacd's side when hosted; 127.0.0.1 taken away)
#   ${SSH_PORT} ${RDP_PORT} ${VNC_PORT}   host ports forwarded to 22, 3389 and 5901; 0 = not forwarded
#   ${HOSTED}                   true on a LabDesk server, false in a take-away bundle
#   ${WORK_FOLDER}              the learner's work folder in the machine, or nil
# Credentials are not set here: a hosted lab gets its own at first boot (desktop-images/vagrant/credentials.sh),
# and a lab taken home keeps Vagrant's usual behaviour (Vagrant replaces its insecure key on the first `up`).

Vagrant.configure("2") do |config|
  config.vm.box = ${BOX}
  config.vm.box_version = ${BOX_VERSION} if ${BOX_VERSION}
  config.vm.box_check_update = false
  config.vm.synced_folder ".", "/vagrant", disabled: true

  config.vm.define ${LAB_NAME} do |m|
    m.vm.hostname = ${LAB_NAME}
    m.vm.network "forwarded_port", id: "ssh", guest: 22, host: ${SSH_PORT}, host_ip: ${HOST_IP}, auto_correct: false
    m.vm.network "forwarded_port", id: "rdp", guest: 3389, host: ${RDP_PORT}, host_ip: ${HOST_IP} if ${RDP_PORT} > 0
    m.vm.network "forwarded_port", id: "vnc", guest: 5901, host: ${VNC_PORT}, host_ip: ${HOST_IP} if ${VNC_PORT} > 0

    m.vm.provider "libvirt" do |lv|
      lv.memory = ${MEMORY_MB}
      lv.cpus = ${CPUS}
      lv.channel :type => "unix", :target_name => "org.qemu.guest_agent.0", :target_type => "virtio"
    end
    m.vm.provider "virtualbox" do |vb|
      vb.memory = ${MEMORY_MB}
      vb.cpus = ${CPUS}
    end
  end
end
