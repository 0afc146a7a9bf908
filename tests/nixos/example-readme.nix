# vms.nix: import it next to microvm.nix's host module and credbridge's module.
{ ... }:
{
  microvm.vms.myvm.config = {
    microvm.hypervisor = "cloud-hypervisor";
    system.stateVersion = "25.05";
  };

  services.credbridge.vms.myvm = {
    enable = true;
    # /etc/credstore.encrypted/myvm.api-key, made with
    #   systemd-creds encrypt --name=api-key - /etc/credstore.encrypted/myvm.api-key
    credentials.api-key.credstore = "myvm.api-key";
  };
}
