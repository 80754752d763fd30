# The tiny test guest as a lab, hosted by LabDesk or taken away (placeholders: docs/vagrant.md).
# Loopback only: SSH reaches the guest through a QEMU user-mode NIC forwarding ${HOST_IP}:${SSH_PORT};
# the UDP tunnel NIC only gives vagrant-libvirt a MAC to find the guest's address by (through the agent).
Vagrant.configure("2") do |config|
  config.vm.box = ${BOX}
  config.vm.box_version = ${BOX_VERSION} if ${BOX_VERSION}
  config.vm.box_check_update = false
  config.vm.boot_timeout = 120
  config.vm.graceful_halt_timeout = 20
  config.vm.define ${LAB_NAME} do |m|
    m.vm.hostname = ${LAB_NAME}
    m.vm.network :private_network, type: "dhcp", auto_config: false,
      libvirt__tunnel_type: "udp", libvirt__tunnel_port: ${UDP_PORT}.to_s, libvirt__tunnel_local_port: ${UDP_LOCAL_PORT}.to_s,
      libvirt__mac: "52:54:00:ab:cd:11"
    m.ssh.host = ${HOST_IP}
    m.ssh.port = ${SSH_PORT}
    m.vm.provider :libvirt do |lv|
      lv.memory = ${MEMORY_MB}
      lv.cpus = ${CPUS}
      lv.qemuargs :value => "-netdev"
      lv.qemuargs :value => "user,id=slirp0,restrict=on,hostfwd=tcp:#{${HOST_IP}}:#{${SSH_PORT}}-10.0.2.15:22"
      lv.qemuargs :value => "-device"
      lv.qemuargs :value => "virtio-net-pci,netdev=slirp0,mac=52:54:00:ab:cd:99,bus=pci.0,addr=0x1e"
    end
  end
end
