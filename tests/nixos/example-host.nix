# vms.nix: a host with two microVMs that get secrets: myvm on
# cloud-hypervisor, qvm on QEMU (microvm.nix's default hypervisor).
# Import it next to microvm.nix's host module and credbridge's module.
{ ... }:
{
  microvm.vms.myvm.config =
    { pkgs, ... }:
    {
      microvm = {
        hypervisor = "cloud-hypervisor";
        vcpu = 2;
        mem = 1024;
        shares = [
          {
            proto = "virtiofs";
            tag = "ro-store";
            source = "/nix/store";
            mountPoint = "/nix/.ro-store";
          }
        ];
        interfaces = [
          {
            type = "tap";
            id = "vm-myvm";
            mac = "02:00:00:00:00:01";
          }
        ];
        # No microvm.vsock.cid: credbridge owns the vsock (vsockCid below).
      };
      system.stateVersion = "25.05";

      # In the guest the secrets are system credentials, imported by PID 1
      # from SMBIOS (or fw_cfg). A bare LoadCredential= name picks them up.
      systemd.services.demo-app = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          DynamicUser = true;
          LoadCredential = [ "api-key" "nginx.key" ];
          ExecStart = "${pkgs.coreutils}/bin/sha256sum %d/api-key %d/nginx.key";
        };
      };
    };

  services.credbridge.vms.myvm = {
    enable = true;
    credentials = {
      # /etc/credstore.encrypted/myvm.api-key, made with
      #   systemd-creds encrypt --name=api-key - /etc/credstore.encrypted/myvm.api-key
      api-key.credstore = "myvm.api-key";
      # Any absolute path outside the Nix store works too, and the guest may
      # know the credential under another name.
      tls-key = {
        encryptedFile = "/var/lib/credstore/myvm-tls-key.cred";
        guestName = "nginx.key";
      };
    };
    # READY=1 when the guest's systemd says so, over vsock CID 42.
    ready = "guest";
    vsockCid = 42;
    readyTimeout = 120;
  };

  # QEMU on microvm.nix's default machine for x86_64, `microvm`: no SMBIOS
  # there, so credbridge hands the credentials over fw_cfg.
  microvm.vms.qvm.config = {
    microvm = {
      hypervisor = "qemu";
      interfaces = [
        {
          type = "tap";
          id = "vm-qvm";
          mac = "02:00:00:00:00:02";
        }
      ];
    };
    system.stateVersion = "25.05";
  };

  services.credbridge.vms.qvm = {
    enable = true;
    credentials.db-password.credstore = "qvm.db-password";
  };
}
