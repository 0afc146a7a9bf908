#!/bin/bash
# The rig's driver, run inside the guest by rig.service (systemd is PID 1, journald runs).
# Installs the shipped units the way an operator does, drives them with systemctl,
# systemd-creds and journalctl, and writes one PASS/FAIL line per verdict.
# The host (tests/systemd/rig.sh) prints the report; docs/units.md, "Running under systemd".
# No secret value is ever printed: only names, sizes and hashes.
set -u
. /etc/rig.conf # RELEASE NESTED NESTED_TIMEOUT SCORE_MAX
export SYSTEMD_PAGER="" SYSTEMD_COLORS=0 LC_ALL=C COLUMNS=160

REP=/run/rig-report
: >"$REP"
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "RIG $(up)s: $*"; }
pass() { echo "PASS check $*" >>"$REP"; say "PASS check $*"; }
fail() {
    echo "FAIL check $*" >>"$REP"
    say "FAIL check $*"
    if [ "${FAILFAST:-0}" = 1 ]; then # rig.sh --fail-fast: the journal, the report, power off
        journalctl --no-pager -b -o short-monotonic -n 60 | sed 's/^/SHOW fail-fast | /'
        echo CREDBRIDGE-RIG-BEGIN; cat "$REP"; echo CREDBRIDGE-RIG-END
        exit 1
    fi
}
info() { echo "INFO $*" >>"$REP"; }
# show NAME CMD...: the command's output on the console as it comes (the host keeps it even
# when the run times out), for diagnosis and the examples in docs/units.md
show() {
    local name=$1 line
    shift
    echo "SHOW $name \$ $*"
    "$@" 2>&1 | while IFS= read -r line; do echo "SHOW $name | $line"; done
}
verdict() { # COND-EXIT-STATUS "N: text" ["why it failed"]
    if [ "$1" = 0 ]; then pass "$2"; else fail "$2${3:+ -- $3}"; fi
}
secs() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }

P() { systemctl show -P "$2" "$1" 2>/dev/null; }
# wait_prop UNIT PROP VALUE SECONDS: 0 once systemctl show says VALUE
wait_prop() {
    local t=$(($4 * 5))
    while [ $t -gt 0 ]; do
        [ "$(P "$1" "$2")" = "$3" ] && return 0
        sleep 0.2
        t=$((t - 1))
    done
    [ "$(P "$1" "$2")" = "$3" ]
}
kids() { # PID -> its child pids
    local want=$1 d st f
    for d in /proc/[0-9]*; do
        read -r st 2>/dev/null <"$d/stat" || continue
        st=${st##*) }
        read -r _ f _ <<<"$st"
        [ "$f" = "$want" ] && echo "${d#/proc/}"
    done
}
alive() { local st; read -r st 2>/dev/null <"/proc/$1/stat" || return 1; case "$st" in *") Z "*) return 1 ;; esac; }
cg_procs() { # unit -> pids in its cgroup (empty if none or no cgroup)
    local cg
    cg=$(P "$1" ControlGroup)
    [ -n "$cg" ] && cat "/sys/fs/cgroup$cg/cgroup.procs" 2>/dev/null | tr '\n' ' '
}
jsince() { journalctl --no-pager -q -u "$1" --since "@$2" "${@:3}"; }
now() { date +%s.%N | cut -c1-14; }

say "rig on $(. /etc/os-release; echo "$PRETTY_NAME"), $(systemctl --version | head -1)"
info "systemd $(systemctl --version | head -1)"

# ------------------------------------------------------------------ setup, as docs/units.md says
getent group kvm >/dev/null || groupadd --system kvm
id credbridge >/dev/null 2>&1 || useradd --system --gid kvm --home-dir /var/lib/credbridge --shell /usr/sbin/nologin credbridge
id microvm >/dev/null 2>&1 || useradd --system --gid kvm --home-dir /var/lib/microvms --shell /usr/sbin/nologin microvm
install -d -m 0700 /etc/credstore.encrypted
cp /rig/units/credbridge-example@.service /rig/units/credbridge-example@.socket /etc/systemd/system/

SECRET="rig-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SECRET_B64=$(printf '%s' "$SECRET" | base64 -w0)
# the OEM string as credbridge makes it, in both forms, and their base64 (the fake's records)
OEM_BIN_B64=$(printf 'io.systemd.credential.binary:api-key=%s' "$SECRET_B64" | base64 -w0)
OEM_TXT_B64=$(printf 'io.systemd.credential:api-key=%s' "$SECRET" | base64 -w0)

systemd-creds setup >/dev/null 2>&1 || true
# --with-key=host: the rig's root file system is the initramfs (a RAM file system), where
# systemd-creds' default (auto) refuses the host key ("host key located on temporary file
# system"); on a host with a disk the command of docs/units.md, without it, picks the same key.
encrypt() { # NAME-OF-FILE < value
    systemd-creds encrypt --with-key=host --name=api-key - "/etc/credstore.encrypted/$1" 2>/run/creds.err
}
# instance NAME [drop-in lines...]: the files the setup of docs/units.md lists, and a drop-in with site values
instance() {
    local n=$1 d=/var/lib/credbridge/$1
    shift
    install -d -m 0700 -o credbridge -g kvm "$d" "$d/rec"
    for f in vmlinux initrd root.img; do [ -e "$d/$f" ] || install -m 0600 -o credbridge -g kvm /dev/null "$d/$f"; done
    printf 'CPUS=1\nMEMORY=512M\nMAC=02:00:00:00:00:01\nVSOCK_CID=42\n' >"$d/vm.env"
    mkdir -p "/etc/systemd/system/credbridge-example@$n.service.d"
    {
        echo "[Service]"
        # the fake plays the guest's systemd: READY=1 to vsock port 8888 after boot (--ready guest)
        echo "Environment=FAKE_CH_GUEST_NOTIFY=8888:READY=1"
        echo "Environment=FAKE_CH_RECORD_DIR=$d/rec"
        printf '%s\n' "$@"
    } >"/etc/systemd/system/credbridge-example@$n.service.d/rig.conf"
}
U=credbridge-example@demo.service
S=credbridge-example@demo.socket
instance demo
printf '%s' "$SECRET" | encrypt demo.api-key || fail "setup: systemd-creds encrypt: $(head -1 /run/creds.err)"
systemctl daemon-reload

# ------------------------------------------------------------------ 1: start, READY=1
say "check 1: systemctl start $U"
t0=$(up)
systemctl start "$U" 2>/run/start.err
rc=$?
took=$(secs "$t0")
A=$(P $U ActiveState) SS=$(P $U SubState) ST=$(P $U StatusText) MP=$(P $U MainPID)
info "1: systemctl start returned $rc after ${took}s: $A/$SS, StatusText=\"$ST\", MainPID=$MP"
verdict $([ "$rc" = 0 ] && [ "$A" = active ] && [ "$SS" = running ]; echo $?) \
    "1: systemctl start returned (exit $rc, ${took}s) with ActiveState=$A SubState=$SS" "$(head -1 /run/start.err)"
verdict $([[ $ST =~ ^VM\ running,\ 1\ credential\ delivered ]]; echo $?) "1: StatusText=\"$ST\""
exe=$(readlink "/proc/$MP/exe" 2>/dev/null)
verdict $([ "$exe" = /usr/local/bin/credbridge ]; echo $?) "1: MainPID $MP is credbridge ($exe)"
FAKE=$(kids "$MP" | head -1)
fexe=$(readlink "/proc/$FAKE/exe" 2>/dev/null)
fcg=$(cut -d: -f3 "/proc/$FAKE/cgroup" 2>/dev/null)
verdict $([ "$fexe" = /usr/bin/cloud-hypervisor ] && [ "$fcg" = "$(P $U ControlGroup)" ]; echo $?) \
    "1: the hypervisor (pid ${FAKE:-none}, $fexe) is credbridge's child in the unit's cgroup $fcg"
oem=$(cat /var/lib/credbridge/demo/rec/oem_strings.json 2>/dev/null)
verdict $([[ $oem == *"$OEM_BIN_B64"* || $oem == *"$OEM_TXT_B64"* ]]; echo $?) \
    "1: the hypervisor got the decrypted credential byte-exact as an OEM string (${#SECRET} bytes)"
# READY=1 came from credbridge only after the guest's: the journal orders them
ready_line=$(journalctl --no-pager -q -u $U -o cat | grep -m1 -i 'ready' | cut -c1-160)
info "1: credbridge said: $ready_line"
show start systemctl status --no-pager -l -n 20 $U
show start-journal journalctl --no-pager -u $U -o short-monotonic

# ------------------------------------------------------------------ 2: socket activation
say "check 2: socket activation"
systemctl stop $U $S
systemctl start $S
A0=$(P $U ActiveState) SA=$(P $S ActiveState)
sock=$(stat -c '%U:%G %a' /run/credbridge/demo/api.sock 2>/dev/null) sdir=$(stat -c '%U %a' /run/credbridge/demo 2>/dev/null)
verdict $([ "$A0" = inactive ] && [ "$SA" = active ] && [ -S /run/credbridge/demo/api.sock ]; echo $?) \
    "2: only the socket runs (socket $SA, service $A0), /run/credbridge/demo/api.sock exists"
show socket systemctl status --no-pager -l -n 5 $S
# Connect first (that starts the service), ask once the service is up, on the same connection.
perl -MIO::Socket::UNIX -e '
    my ($path, $unit, $out) = @ARGV;
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path) or die "connect: $!\n";
    for (1 .. 300) { last if system("systemctl", "is-active", "-q", $unit) == 0; select(undef, undef, undef, 0.2); }
    print $s "GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
    my ($buf, $len) = ("", undef);
    local $SIG{ALRM} = sub { die "timeout\n" }; alarm 30;
    while (sysread($s, my $chunk, 65536)) {
        $buf .= $chunk;
        if ($buf =~ /\r\n\r\n/ and !defined $len) { ($len) = $buf =~ /Content-Length: *(\d+)/i; $len //= 0; }
        if (defined $len) { my $h = index($buf, "\r\n\r\n") + 4; last if length($buf) - $h >= $len; }
    }
    open my $f, ">", $out or die; print $f $buf;' /run/credbridge/demo/api.sock $U /run/vminfo 2>/run/vminfo.err
prc=$?
A1=$(P $U ActiveState) SS1=$(P $U SubState)
head1=$(head -1 /run/vminfo 2>/dev/null | tr -d '\r')
verdict $([ "$prc" = 0 ] && [ "$A1" = active ] && [ "$SS1" = running ]; echo $?) \
    "2: a connection to the socket started the service ($A1/$SS1)" "$(head -1 /run/vminfo.err)"
body=$(tail -c +1 /run/vminfo 2>/dev/null)
verdict $([[ $head1 == "HTTP/1.1 200"* && $body == *'/var/lib/credbridge/demo/vmlinux'* \
    && ( $body == *"io.systemd.credential.binary:api-key=$SECRET_B64"* || $body == *"io.systemd.credential:api-key=$SECRET"* ) ]]; echo $?) \
    "2: vm.info on that connection answered \"$head1\" with the config credbridge sent (kernel path, the api-key OEM string)"
rm -f /run/vminfo
# #13: credbridge (User=credbridge) connects to that path itself; root-owned 0700 directories
# made every start fail with "Permission denied"
verdict $([ "$sock" = "credbridge:kvm 600" ] && [ "$sdir" = "root 755" ] \
    && setpriv --reuid=credbridge --regid=kvm --clear-groups perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) or die "$!\n"' /run/credbridge/demo/api.sock 2>/run/conn.err \
    && ! setpriv --reuid=nobody --regid=nogroup --clear-groups perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) or die "$!\n"' /run/credbridge/demo/api.sock 2>/dev/null; echo $?) \
    "2: the API socket is $sock in a directory $sdir: the unit's user can connect, nobody cannot" "$(cat /run/conn.err 2>/dev/null)"
show activated journalctl --no-pager -u $S -u $U -o short-monotonic -n 12

# ------------------------------------------------------------------ 3: stop, SIGKILL, restart
say "check 3: systemctl stop"
MP=$(P $U MainPID)
FAKE=$(kids "$MP" | head -1)
: >/var/lib/credbridge/demo/rec/requests.jsonl
systemd-analyze log-level debug
t0=$(up) ts=$(now)
systemctl stop $U
took=$(secs "$t0")
systemd-analyze log-level info
sleep 0.5
A=$(P $U ActiveState) ES=$(P $U ExecMainStatus) EC=$(P $U ExecMainCode) R=$(P $U Result)
left=$(cg_procs $U)
verdict $([ "$A" = inactive ] && [ "$ES" = 0 ] && [ "$EC" = 1 ] && [ "$R" = success ]; echo $?) \
    "3: systemctl stop: ${took}s (TimeoutStopSec=$(P $U TimeoutStopUSec)), $A, ExecMainCode=$EC ExecMainStatus=$ES Result=$R"
stopping=$(jsince $U "$ts" -o cat | grep -m1 'STOPPING=1' | cut -c1-200)
verdict $([ -n "$stopping" ]; echo $?) "3: credbridge sent STOPPING=1 (PID 1 logged: ${stopping:-nothing})"
verdict $(grep -q 'vm.power-button' /var/lib/credbridge/demo/rec/requests.jsonl; echo $?) \
    "3: credbridge pressed the power button (PUT vm.power-button reached the hypervisor)"
verdict $([ -z "$left" ] && ! alive "$FAKE"; echo $?) "3: no process of the unit left (cgroup: ${left:-empty}; hypervisor pid $FAKE gone)"
show stop journalctl --no-pager -u $U -o short-monotonic --since "@$ts" -p info
show stopped systemctl status --no-pager -l -n 0 $U

say "check 3: SIGKILL to the main process"
systemctl start $U
MP=$(P $U MainPID)
FAKE=$(kids "$MP" | head -1)
NR0=$(P $U NRestarts)
ts=$(now)
systemctl kill --kill-who=main --signal=SIGKILL $U
t0=$(up)
for _ in $(seq 100); do alive "$FAKE" || break; sleep 0.1; done
gone=$(secs "$t0")
verdict $(! alive "$FAKE"; echo $?) "3: SIGKILL to credbridge (pid $MP): the hypervisor (pid $FAKE) is gone after ${gone}s"
wait_prop $U SubState running 60
NR1=$(P $U NRestarts)
MP2=$(P $U MainPID)
verdict $([ "$(P $U ActiveState)" = active ] && [ "${NR1:-0}" -gt "${NR0:-0}" ] && [ "$MP2" != "$MP" ]; echo $?) \
    "3: Restart=on-failure brought it back: $(P $U ActiveState)/$(P $U SubState), NRestarts $NR0 -> $NR1, MainPID $MP -> $MP2"
show killed journalctl --no-pager -u $U -o short-monotonic --since "@$ts"
systemctl stop $U $S

# ------------------------------------------------------------------ 4: watchdog
say "check 4: watchdog"
W=credbridge-example@wd.service
instance wd "Environment=FAKE_CH_PING_STOP_AFTER_MS=1500"
printf '%s' "$SECRET" | encrypt wd.api-key
systemctl daemon-reload
ts=$(now)
systemctl start $W
NR0=$(P $W NRestarts)
WD=$(P $W WatchdogUSec)
sawres=""
t0=$(up)
for _ in $(seq 600); do
    r=$(P $W Result)
    [ "$r" = watchdog ] && sawres=yes
    [ "$(P $W NRestarts)" -gt "${NR0:-0}" ] 2>/dev/null && break
    sleep 0.2
done
NR1=$(P $W NRestarts)
took=$(secs "$t0")
wdlog=$(jsince $W "$ts" -o cat | grep -m1 -i 'watchdog timeout' | cut -c1-120)
reslog=$(jsince $W "$ts" -o cat | grep -m1 "result 'watchdog'" | cut -c1-120)
verdict $([ "$WD" != 0 ] && [ "${NR1:-0}" -gt "${NR0:-0}" ] && { [ -n "$sawres" ] || [ -n "$reslog" ]; }; echo $?) \
    "4: WatchdogUSec=$WD; the fake stopped answering vmm.ping; after ${took}s systemd killed and restarted the unit: NRestarts $NR0 -> $NR1, Result=watchdog (${reslog:-not seen}; ${wdlog:-no timeout line})"
show watchdog journalctl --no-pager -u $W -o short-monotonic --since "@$ts"
systemctl stop $W

# ------------------------------------------------------------------ 5: failures
# fail_case NAME "what" WANT-STATUS SECONDS: start, wait for failed, judge
fail_case() {
    local n=$1 what=$2 want=$3 limit=$4 u=credbridge-example@$1.service ts A ES ST R NR err
    say "check 5: $what"
    ts=$(now)
    systemctl start $u 2>/dev/null
    wait_prop $u ActiveState failed "$limit"
    A=$(P $u ActiveState) ES=$(P $u ExecMainStatus) ST=$(P $u StatusText) R=$(P $u Result) NR=$(P $u NRestarts)
    err=$(jsince $u "$ts" -p err -o short | grep -m1 ' credbridge\[[0-9]*\]: ' | sed 's/^.* credbridge\[[0-9]*\]: //' | cut -c1-200)
    info "5 $n: $A Result=$R ExecMainStatus=$ES NRestarts=$NR StatusText=\"$ST\""
    verdict $([ "$A" = failed ] && [ "$ES" = "$want" ]; echo $?) \
        "5: $what: unit $A (Result=$R, NRestarts=$NR) with ExecMainStatus=$ES (want $want)"
    local first=${ST#Failed: }
    verdict $([[ $ST == "Failed: "* && -n $err && ( $err == *"$first"* || $first == *"$err"* ) ]]; echo $?) \
        "5: $what: StatusText=\"$ST\" is the error's first line, err-priority journal line: \"$err\""
    show "fail-$n" systemctl status --no-pager -l -n 8 $u
}
big=$(head -c 3750 /dev/urandom | base64 -w0) # 5000 bytes of base64 text
instance big
printf '%s' "$big" | encrypt big.api-key
instance nocred
instance exit1 "Environment=FAKE_CH_EXIT_BEFORE_BOOT=1"
printf '%s' "$SECRET" | encrypt exit1.api-key
systemctl daemon-reload
fail_case big "a credential over the SMBIOS budget" 125 60
fail_case nocred "a missing encrypted credential" 125 60
fail_case exit1 "a hypervisor that exits at once" 1 180
systemctl stop credbridge-example@big.socket credbridge-example@nocred.socket credbridge-example@exit1.socket

# ------------------------------------------------------------------ 7: microvm.nix's shape
say "check 7: microvm@demo with the shipped drop-in"
# The template, written from microvm.nix's host module (reference/microvm-nix.md, section 1);
# its sibling units (tap, virtiofsd, ...) and pre/post scripts are left out.
cat >/etc/systemd/system/microvm@.service <<'EOF'
[Unit]
Description=MicroVM '%i'
After=network.target
ConditionPathExists=/var/lib/microvms/%i/current/bin/microvm-run

[Service]
Type=simple
ExecStart=/var/lib/microvms/%i/current/bin/microvm-run
ExecStop=/var/lib/microvms/%i/booted/bin/microvm-shutdown
Restart=always
RestartSec=5s
User=microvm
Group=kvm
NotifyAccess=all
TimeoutSec=150
LimitNOFILE=1048576
LimitMEMLOCK=infinity
SyslogIdentifier=microvm@%i
WorkingDirectory=/var/lib/microvms/%i
EOF
# microvm_vm NAME: the files microvm.nix's runner puts in /var/lib/microvms/NAME, the
# wrapper nixos/wrapper.nix builds, and the shipped drop-in, installed for this one VM
microvm_vm() {
    local n=$1 M=/var/lib/microvms/$1
    install -d -o microvm -g kvm "$M" "$M/current/bin" "$M/booted/bin" "$M/rec" "/opt/ch-wrapper-$n/bin"
    install -m 0644 -o microvm -g kvm /dev/null "$M/vmlinux"
    # microvm-shutdown as the runner writes it: curl to the API socket, then wait for the main PID
    cat >"$M/booted/bin/microvm-shutdown" <<EOF
#!/bin/sh
curl --unix-socket $n.sock -X PUT http://localhost/api/v1/vm.power-button
while kill -0 "\$MAINPID" 2>/dev/null; do sleep 1; done
EOF
    # microvm.cloud-hypervisor.package's bin/cloud-hypervisor, as nixos/wrapper.nix makes it
    cat >"/opt/ch-wrapper-$n/bin/cloud-hypervisor" <<EOF
#!/bin/sh
exec /usr/local/bin/credbridge run --hypervisor cloud-hypervisor --argv0 microvm@$n --credential api-key -- /usr/bin/cloud-hypervisor "\$@"
EOF
    # microvm-run as lib/runner.nix writes it: preStart, then exec -a the hypervisor command
    cat >"$M/current/bin/microvm-run" <<EOF
#!/bin/bash
set -eou pipefail
rm -f $n.sock
export FAKE_CH_RECORD_DIR=$M/rec
exec -a "microvm@$n" /opt/ch-wrapper-$n/bin/cloud-hypervisor --cpus boot=1 --watchdog \\
    --kernel $M/vmlinux --cmdline "console=ttyS0 panic=-1" --seccomp true \\
    --memory size=512M,shared=off --platform "" --console null --serial tty --api-socket $n.sock
EOF
    chmod 0755 "$M/booted/bin/microvm-shutdown" "/opt/ch-wrapper-$n/bin/cloud-hypervisor" "$M/current/bin/microvm-run"
    mkdir -p "/etc/systemd/system/microvm@$n.service.d"
    cp /rig/units/microvm@.service.d/credbridge.conf "/etc/systemd/system/microvm@$n.service.d/"
}
M=/var/lib/microvms/demo
microvm_vm demo
microvm_vm nocred
printf '%s' "$SECRET" | encrypt demo.api-key
systemctl daemon-reload
V=microvm@demo.service
ts=$(now)
systemctl start $V 2>/run/start.err
rc=$?
A=$(P $V ActiveState) SS=$(P $V SubState) MP=$(P $V MainPID)
exe=$(readlink "/proc/$MP/exe" 2>/dev/null)
verdict $([ "$rc" = 0 ] && [ "$A" = active ] && [ "$SS" = running ] && [ "$exe" = /usr/local/bin/credbridge ]; echo $?) \
    "7: systemctl start $V: $A/$SS, MainPID $MP is $exe (microvm-run and the wrapper exec'd into credbridge)" "$(head -1 /run/start.err)"
child=$(kids "$MP" | head -1)
argv0=$(tr '\0' '\n' <"/proc/$child/cmdline" 2>/dev/null | head -1)
verdict $([ "$argv0" = "microvm@demo" ] && [ "$(readlink "/proc/$child/exe")" = /usr/bin/cloud-hypervisor ]; echo $?) \
    "7: the hypervisor (pid $child) runs as argv[0] \"$argv0\""
oem=$(cat "$M/rec/oem_strings.json" 2>/dev/null)
verdict $([[ $oem == *"$OEM_BIN_B64"* || $oem == *"$OEM_TXT_B64"* ]]; echo $?) "7: the drop-in's LoadCredentialEncrypted= reached the hypervisor byte-exact"
got="Type=$(P $V Type) NotifyAccess=$(P $V NotifyAccess) KillMode=$(P $V KillMode) TimeoutStopUSec=$(P $V TimeoutStopUSec) ExecStop=[$(P $V ExecStop)] Restart=$(P $V Restart)"
nexec=$(systemctl show -p ExecStart $V | grep -o 'path=' | wc -l)
din=$(P $V DropInPaths)
verdict $([ "$got" = "Type=notify NotifyAccess=main KillMode=mixed TimeoutStopUSec=45s ExecStop=[] Restart=always" ] \
    && [ "$nexec" = 1 ] && [[ $din == *microvm@demo.service.d/credbridge.conf* ]]; echo $?) \
    "7: systemctl show: $got, $nexec ExecStart=, DropInPaths=$din"
ts2=$(now)
systemctl stop $V
verdict $([ "$(P $V ActiveState)" = inactive ] && [ "$(P $V ExecMainStatus)" = 0 ] && [ -z "$(cg_procs $V)" ]; echo $?) \
    "7: systemctl stop: $(P $V ActiveState), ExecMainStatus=$(P $V ExecMainStatus), no process left"
show microvm systemctl status --no-pager -l -n 0 $V
# the template's Restart=always and a credential that is not there
systemctl start microvm@nocred.service 2>/dev/null
wait_prop microvm@nocred.service ActiveState failed 40
verdict $([ "$(P microvm@nocred.service ActiveState)" = failed ] && [ "$(P microvm@nocred.service ExecMainStatus)" = 125 ]; echo $?) \
    "7: microvm@nocred without its credential: $(P microvm@nocred.service ActiveState) with ExecMainStatus=$(P microvm@nocred.service ExecMainStatus), NRestarts=$(P microvm@nocred.service NRestarts) (RestartPreventExitStatus= over Restart=always)"
show microvm-journal journalctl --no-pager -u $V -o short-monotonic --since "@$ts"

# ------------------------------------------------------------------ 8: the whole chain, nested
if [ "$NESTED" = 1 ]; then
    say "check 8: credbridge starts QEMU for a nested guest (minutes under nested TCG)"
    N=credbridge-example@nested.service
    d=/var/lib/credbridge/nested
    instance nested \
        "ExecStart=" \
        "ExecStart=/usr/local/bin/credbridge run --credential api-key -- /usr/bin/qemu-system-x86_64 -machine pc -accel tcg -m 384M -smp 1 -nodefaults -display none -no-reboot -kernel $d/vmlinux -initrd $d/initrd -append \"console=ttyS0 panic=-1 quiet\" -serial file:$d/serial.log"
    install -m 0600 -o credbridge -g kvm /rig/l2/vmlinux "$d/vmlinux"
    install -m 0600 -o credbridge -g kvm /rig/l2/initrd "$d/initrd"
    # every byte value, then the secret
    { perl -e 'print map { chr } 0 .. 255'; printf '%s' "$SECRET"; } >/run/nested.expect
    encrypt nested.api-key </run/nested.expect
    systemctl daemon-reload
    ts=$(now)
    t0=$(up)
    systemctl start $N 2>/run/start.err
    rc=$?
    info "8: systemctl start returned $rc after $(secs "$t0")s: $(P $N ActiveState)/$(P $N SubState) \"$(P $N StatusText)\""
    MP=$(P $N MainPID)
    q=$(kids "$MP" | head -1)
    verdict $([ "$rc" = 0 ] && [ "$(readlink "/proc/$q/exe")" = /usr/bin/qemu-system-x86_64 ]; echo $?) \
        "8: $N is up (StatusText=\"$(P $N StatusText)\"), QEMU (pid $q) is credbridge's child" "$(head -1 /run/start.err)"
    # Poll seldom: every systemctl call takes L1's one vCPU away from L2's nested TCG.
    for ((i = 0; i < NESTED_TIMEOUT / 5; i++)); do
        [ "$(P $N ActiveState)" = inactive ] && break
        sleep 5
        [ $((i % 12)) = 11 ] && say "check 8: L2 running for $(secs "$t0")s, serial: $(stat -c %s "$d/serial.log" 2>/dev/null || echo 0) bytes"
    done
    info "8: the unit ended after $(secs "$t0")s: $(P $N ActiveState), ExecMainStatus=$(P $N ExecMainStatus)"
    rep=$(tr -d '\r' <"$d/serial.log" | awk '/^CREDBRIDGE-E2E-BEGIN$/ {on=1; next} /^CREDBRIDGE-E2E-END$/ {on=0} on')
    line=$(grep ' api-key$' <<<"$rep" | head -1)
    read -r _ size sum data _ <<<"$line"
    esize=$(stat -c %s /run/nested.expect) esum=$(sha256sum </run/nested.expect | cut -d' ' -f1)
    same=1
    [ "$size" = "$esize" ] && [ "$sum" = "$esum" ] && printf '%s' "$data" | base64 -d 2>/dev/null | cmp -s - /run/nested.expect && same=0
    verdict $same "8: the nested guest ($(grep -m1 '^SYSTEMD ' <<<"$rep" | cut -c9-)) has /run/credentials/@system/api-key: ${size:-no} bytes sha256 ${sum:0:16}..., want $esize bytes ${esum:0:16}..."
    verdict $([ "$(P $N ActiveState)" = inactive ] && [ "$(P $N ExecMainStatus)" = 0 ]; echo $?) \
        "8: the guest powered off, QEMU exited 0, so did the unit ($(P $N ActiveState), ExecMainStatus=$(P $N ExecMainStatus))"
    [ $same = 0 ] || tr -d '\r' <"$d/serial.log" | tail -20 | sed 's/^/INFO 8 serial: /' >>"$REP"
    show nested journalctl --no-pager -u $N -o short-monotonic --since "@$ts"
    systemctl stop credbridge-example@nested.socket
    rm -f /run/nested.expect "$d/serial.log"
fi

# ------------------------------------------------------------------ 6: no secret in the journal
say "check 6: the journal"
D=credbridge-example@dbg.service
instance dbg "ExecStart=" "ExecStart=/usr/local/bin/credbridge run --log-level debug --ready guest --ready-timeout 120 --stop-timeout 30 --vsock-cid \${VSOCK_CID} --credential api-key -- /usr/bin/cloud-hypervisor --cpus boot=\${CPUS} --memory size=\${MEMORY} --kernel /var/lib/credbridge/%i/vmlinux --initramfs /var/lib/credbridge/%i/initrd --disk path=/var/lib/credbridge/%i/root.img --net tap=vm-%i,mac=\${MAC} --console off --serial tty --seccomp true"
printf '%s' "$SECRET" | encrypt dbg.api-key
systemctl daemon-reload
systemctl start $D && systemctl stop $D
ndebug=$(journalctl --no-pager -q -u $D -p debug -o json | grep -c '"PRIORITY":"7"')
CANARY="rig-canary-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$CANARY" | systemd-cat -t rig-canary
journalctl --flush 2>/dev/null; journalctl --sync 2>/dev/null
journalctl --no-pager -b -o export >/run/export.bin
files=$(find /run/log/journal /var/log/journal -name '*.journal*' 2>/dev/null)
n_files=$(echo "$files" | grep -c .)
hits() { # pattern -> "export:N files:M"
    local e f=0 x
    e=$(grep -c -a -F -- "$1" /run/export.bin)
    for x in $files; do grep -q -a -F -- "$1" "$x" && f=$((f + 1)); done
    echo "$e $f"
}
read -r ce cf < <(hits "$CANARY")
verdict $([ "$ce" -gt 0 ] && [ "$cf" -gt 0 ]; echo $?) "6: the search works: a canary line is found (export: $ce, journal files: $cf of $n_files)"
bad="" i=0
for pat in "$SECRET" "$SECRET_B64" "$OEM_BIN_B64" "$OEM_TXT_B64" "${big:0:64}" "$(printf '%s' "$big" | base64 -w0 | cut -c1-64)"; do
    read -r pe pf < <(hits "$pat")
    i=$((i + 1))
    [ "$pe$pf" = 00 ] || bad+=" pattern $i (export $pe, files $pf)"
done
verdict $([ -z "$bad" ]; echo $?) \
    "6: no credential value, nor its base64, in journalctl -o export of the boot ($(wc -c </run/export.bin) bytes) or the $n_files journal files; credbridge ran with --log-level debug ($ndebug debug lines)" "found:$bad"
rm -f /run/export.bin

# ------------------------------------------------------------------ 9: systemd-analyze security
say "check 9: systemd-analyze security"
systemd-analyze security --no-pager $U >/run/sec.out 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' /run/sec.out)
verdict $([ -n "$score" ] && awk -v s="$score" -v m="$SCORE_MAX" 'BEGIN { exit !(s <= m) }'; echo $?) \
    "9: systemd-analyze security $U: exposure $score (at most $SCORE_MAX)" "$(tail -1 /run/sec.out)"
show security cat /run/sec.out

say "done"
echo CREDBRIDGE-RIG-BEGIN
cat "$REP"
echo CREDBRIDGE-RIG-END
