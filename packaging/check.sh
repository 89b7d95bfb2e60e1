#!/bin/sh
# Acceptance checks of the .deb and .rpm packages (issue 4; the generated man
# pages, completions and monitoring files: issue 17), run by CI.
#
#   packaging/check.sh
#
# Builds the release binary and both packages (packaging/build.sh), then checks
# their contents, lints them, installs the .deb on this machine with dpkg
# (upgrade, remove, purge) and the .rpm into a throw-away `rpm --root` folder.
# Prints one PASS/FAIL line per check and exits 1 if any check failed.
#
# It must run as root on a disposable machine (CI): it runs dpkg -i / dpkg -P.
# It refuses to run where jcdi-forwarder is already installed, and on exit it
# purges the package and deletes the jcdi-forwarder user if it created them.
# systemd need not be running (checks of the unit are static).
set -eu

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

PKG=jcdi-forwarder
UNIT=/usr/lib/systemd/system/$PKG.service
CONF=/etc/$PKG/config.toml
ENVFILE=/etc/$PKG/$PKG.env
STATE=/var/lib/$PKG
BASH_COMPLETION=/usr/share/bash-completion/completions/$PKG
ZSH_COMPLETION_DEB=/usr/share/zsh/vendor-completions/_$PKG
ZSH_COMPLETION_RPM=/usr/share/zsh/site-functions/_$PKG
FISH_COMPLETION=/usr/share/fish/vendor_completions.d/$PKG.fish
RULES=/usr/share/$PKG/prometheus/$PKG.rules.yml
DASHBOARD=/usr/share/$PKG/grafana/$PKG.json

failures=0
passes=0
pass() { passes=$((passes + 1)); echo "PASS: $*"; }
fail() { failures=$((failures + 1)); echo "FAIL: $*"; }
# check NAME COMMAND...: runs COMMAND, output to a log shown only on failure.
check() {
    name=$1; shift
    if "$@" >"$work/out" 2>&1; then
        pass "$name"
    else
        fail "$name"
        sed 's/^/    /' "$work/out"
    fi
}

if [ "$(id -u)" -ne 0 ]; then
    echo "check.sh: must run as root (it installs and purges the package)" >&2
    exit 2
fi
if dpkg-query -W -f '${db:Status-Status}' "$PKG" 2>/dev/null | grep -qv '^not-installed$'; then
    echo "check.sh: $PKG is already installed (or left configured) here; this script" >&2
    echo "would purge it. Remove it first (dpkg -P $PKG) or run on a disposable machine." >&2
    exit 2
fi

work=$(mktemp -d)
user_existed=no
if getent passwd "$PKG" >/dev/null; then user_existed=yes; fi
installed_by_us=no
rpm_scripts_ran=no
cleanup() {
    # Leave the machine as it was: no package, no user we created, no temp files.
    if [ "$installed_by_us" = yes ]; then
        dpkg -P "$PKG" >/dev/null 2>&1 || true
    fi
    if [ "$rpm_scripts_ran" = yes ]; then
        rm -rf "$STATE"
    fi
    if [ "$user_existed" = no ] && getent passwd "$PKG" >/dev/null; then
        userdel "$PKG" >/dev/null 2>&1 || true
        if getent group "$PKG" >/dev/null; then groupdel "$PKG" >/dev/null 2>&1 || true; fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Tools: install only what is missing (CI may start from a clean machine). ---
missing=""
command -v lintian >/dev/null 2>&1 || missing="$missing lintian"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v rpm >/dev/null 2>&1 || missing="$missing rpm"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v adduser >/dev/null 2>&1 || missing="$missing adduser"
command -v man >/dev/null 2>&1 || missing="$missing man-db"
if [ -n "$missing" ]; then
    echo "check.sh: installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# --- Build (release binary, .deb, .rpm); build.sh installs cargo-deb and
# cargo-generate-rpm when missing. ---
if ! packaging/build.sh; then
    fail "build: packaging/build.sh"
    echo "$passes passed, $failures failed"
    exit 1
fi
deb=$(ls target/packages/"${PKG}"_*_amd64.deb)
rpm=$(ls target/packages/"${PKG}"-*.x86_64.rpm)
version=$(dpkg-deb -f "$deb" Version)
echo "check.sh: checking $deb and $rpm"

# ===================== .deb: contents =====================
dpkg-deb -c "$deb" >"$work/deb-contents"
# A file's line in `dpkg-deb -c`: "MODE OWNER/GROUP SIZE DATE TIME ./PATH".
deb_has() { # MODE PATH
    awk -v m="$1" -v p="./$2" '$1 == m && $2 == "0/0" && $6 == p { found = 1 } END { exit !found }' "$work/deb-contents"
}
layout_deb() {
    rc=0
    for entry in "-rwxr-xr-x usr/bin/$PKG" \
                 "-rw-r--r-- ${UNIT#/}" \
                 "-rw-r----- ${CONF#/}" \
                 "-rw------- ${ENVFILE#/}" \
                 "-rw-r--r-- usr/share/man/man1/$PKG.1.gz" \
                 "-rw-r--r-- usr/share/man/man1/$PKG-run.1.gz" \
                 "-rw-r--r-- ${BASH_COMPLETION#/}" \
                 "-rw-r--r-- ${ZSH_COMPLETION_DEB#/}" \
                 "-rw-r--r-- ${FISH_COMPLETION#/}" \
                 "-rw-r--r-- ${RULES#/}" \
                 "-rw-r--r-- ${DASHBOARD#/}" \
                 "-rw-r--r-- usr/share/doc/$PKG/README.md" \
                 "-rw-r--r-- usr/share/doc/$PKG/copyright" \
                 "-rw-r--r-- usr/share/doc/$PKG/changelog.Debian.gz"; do
        # shellcheck disable=SC2086 # "MODE PATH" splits into two arguments
        deb_has $entry || { echo "missing or wrong mode: $entry"; rc=1; }
    done
    cat "$work/deb-contents"
    return $rc
}
check "deb: layout and modes (dpkg-deb -c)" layout_deb

conffiles_deb() {
    dpkg-deb -I "$deb" conffiles | tee "$work/conffiles"
    grep -qx "$CONF" "$work/conffiles" && grep -qx "$ENVFILE" "$work/conffiles"
}
check "deb: both files in /etc are conffiles" conffiles_deb

scripts_deb() {
    dpkg-deb -e "$deb" "$work/control"
    rc=0
    for s in "$work"/control/preinst "$work"/control/postinst "$work"/control/prerm "$work"/control/postrm; do
        [ -e "$s" ] || continue
        # cargo-deb replaces the token everywhere; one left over would be a shell comment no more.
        if grep -n 'DEBHELPER' "$s"; then echo "token left in $(basename "$s")"; rc=1; fi
    done
    [ -x "$work/control/postinst" ] || { echo "no postinst"; rc=1; }
    grep -q 'adduser --system' "$work/control/postinst" || { echo "postinst does not create the user"; rc=1; }
    grep -q 'deb-systemd-helper' "$work/control/postinst" || { echo "postinst lacks the systemd snippet"; rc=1; }
    # Install must neither start nor enable the service: cargo-deb's
    # "dont-enable" snippet (enable only if it already was) and on upgrade
    # only try-restart (restart if running).
    grep -q 'was-enabled' "$work/control/postinst" || { echo "postinst may enable the service"; rc=1; }
    # shellcheck disable=SC2016 # a literal $_dh_action, as in the snippet
    if grep -nE 'deb-systemd-invoke +(start|restart|\$_dh_action)' "$work/control/postinst"; then
        echo "postinst may start the service"; rc=1
    fi
    return $rc
}
check "deb: maintainer scripts (user creation, systemd snippet, no start on install)" scripts_deb

check "deb: lintian --fail-on error,warning" lintian --fail-on error,warning "$deb"

shellcheck_all() {
    # The sources, and the scripts as packaged (with cargo-deb's snippets).
    set -- packaging/debian/postinst packaging/debian/postrm packaging/rpm/*.sh \
        packaging/build.sh packaging/check.sh
    for s in preinst postinst prerm postrm; do
        if [ -e "$work/control/$s" ]; then set -- "$@" "$work/control/$s"; fi
    done
    echo "shellcheck -s sh $*"
    shellcheck -s sh "$@"
}
check "shellcheck -s sh on every maintainer script and rpm scriptlet" shellcheck_all

# ===================== .deb: install =====================
installed_by_us=yes
check "deb: dpkg -i" dpkg -i "$deb"

user_ok() {
    getent passwd "$PKG" || { echo "no user $PKG"; return 1; }
    getent group "$PKG" || { echo "no group $PKG"; return 1; }
    uid=$(id -u "$PKG")
    shell=$(getent passwd "$PKG" | cut -d: -f7)
    echo "uid=$uid shell=$shell (existed before this run: $user_existed)"
    [ "$uid" -lt 1000 ] && [ "$shell" = /usr/sbin/nologin ]
}
check "deb: system user $PKG (uid < 1000, nologin)" user_ok

perms_ok() {
    rc=0
    for expect in "755 root:root /usr/bin/$PKG" \
                  "644 root:root $UNIT" \
                  "640 root:$PKG $CONF" \
                  "600 root:root $ENVFILE" \
                  "750 $PKG:$PKG $STATE"; do
        path=${expect##* }
        got="$(stat -c '%a %U:%G' "$path" 2>&1) $path"
        echo "$got"
        [ "$got" = "$expect" ] || { echo "  expected: $expect"; rc=1; }
    done
    return $rc
}
check "deb: installed owners and modes" perms_ok

not_started() {
    # Not enabled: no symlink in any .wants folder. (Not started: no systemd
    # here, and the postinst snippet only try-restarts on upgrade, checked above.)
    for link in /etc/systemd/system/*.wants/"$PKG".service; do
        if [ -e "$link" ] || [ -L "$link" ]; then echo "enabled: $link"; return 1; fi
    done
}
check "deb: install does not enable the service" not_started

verify_unit() {
    # systemd-analyze verify exits 0 on unknown keys and typos: any output fails.
    out=$(systemd-analyze verify "$UNIT" 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
}
check "unit: systemd-analyze verify prints nothing" verify_unit

security_unit() {
    systemd-analyze security --offline=yes --threshold=20 --no-pager "$UNIT" >"$work/security" 2>&1
    rc=$?
    grep 'Overall exposure' "$work/security"
    [ $rc -eq 0 ] || cat "$work/security"
    return $rc
}
# Shown on the PASS line too: the score is the point of this check.
if security_unit >"$work/sec-summary" 2>&1; then
    pass "unit: systemd-analyze security --offline=yes --threshold=20 ($(sed -n 's/.*Overall exposure level for [^:]*: //p' "$work/sec-summary"))"
else
    fail "unit: systemd-analyze security --offline=yes --threshold=20"
    sed 's/^/    /' "$work/sec-summary"
fi

# The installed binary validates the shipped example, run as the unit runs it:
# as the service user (it reads config.toml through its group, and writes to
# the state folder that postinst made), with the two variables set.
validate_ok() {
    runuser -u "$PKG" -- env JUMPCLOUD_API_KEY=check-jumpcloud-key SEKOIA_INTAKE_KEY=check-intake-key \
        /usr/bin/"$PKG" validate --config "$CONF"
}
check "validate: the shipped config.toml with both keys set (as user $PKG)" validate_ok

validate_refuses_empty() {
    # With the shipped env file as is (empty keys), validate must refuse and
    # name what to fill in, so that the service does not start without keys.
    # The user cannot open the 0600 file: root hands it over on stdin, as
    # systemd reads it as root for EnvironmentFile=.
    # shellcheck disable=SC2016 # expanded by the inner shell
    if runuser -u "$PKG" -- env -u JUMPCLOUD_API_KEY -u SEKOIA_INTAKE_KEY sh -c \
        'set -a; eval "$(cat)"; set +a; exec "$0" validate --config "$1"' "/usr/bin/$PKG" "$CONF" \
        <"$ENVFILE" >"$work/empty" 2>&1; then
        cat "$work/empty"; echo "validate accepted empty keys"; return 1
    fi
    cat "$work/empty"
    grep -q JUMPCLOUD_API_KEY "$work/empty" && grep -q SEKOIA_INTAKE_KEY "$work/empty"
}
check "validate: refuses the shipped env file's empty keys, naming both" validate_refuses_empty

# The generated man page, as an administrator reads it: every subcommand that
# --help lists is in `man jcdi-forwarder`, and each (but help) has its page.
man_lists_subcommands() {
    /usr/bin/"$PKG" --help >"$work/help" || return 1
    # The "Commands:" block of --help: two spaces, the name, then its help.
    awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^[^ ]/ { exit }' \
        "$work/help" >"$work/subcommands"
    [ -s "$work/subcommands" ] || { echo "no subcommand found in --help:"; cat "$work/help"; return 1; }
    MANWIDTH=200 man "$PKG" 2>"$work/man-err" | col -b >"$work/man" || true
    [ -s "$work/man" ] || { echo "man $PKG shows nothing:"; cat "$work/man-err"; return 1; }
    rc=0
    while read -r sub; do
        if grep -qE "^ +$PKG $sub\$" "$work/man"; then
            echo "man $PKG lists: $sub"
        else
            echo "man $PKG does not list: $sub"; rc=1
        fi
        if [ "$sub" != help ] && ! man -w "$PKG-$sub" >/dev/null 2>&1; then
            echo "no page $PKG-$sub(1)"; rc=1
        fi
    done <"$work/subcommands"
    return $rc
}
check "man: 'man $PKG' lists every subcommand of --help, each with its own page" man_lists_subcommands

completions_ok() {
    rc=0
    for f in "$BASH_COMPLETION" "$ZSH_COMPLETION_DEB" "$FISH_COMPLETION"; do
        [ -s "$f" ] || { echo "missing: $f"; rc=1; }
    done
    bash -n "$BASH_COMPLETION" || { echo "bash cannot parse $BASH_COMPLETION"; rc=1; }
    # Completing "jcdi-forwarder dead" in bash, as bash-completion would.
    # shellcheck disable=SC2016 # expanded by bash
    got=$(bash -c '. "$0"; fn=$(complete -p jcdi-forwarder | sed "s/.*-F \([^ ]*\) .*/\1/")
        COMP_WORDS=(jcdi-forwarder dead); COMP_CWORD=1; COMP_LINE="jcdi-forwarder dead"
        COMP_POINT=${#COMP_LINE}; "$fn" jcdi-forwarder dead jcdi-forwarder; printf "%s\n" "${COMPREPLY[@]}"' \
        "$BASH_COMPLETION")
    echo "bash completes 'jcdi-forwarder dead' to: $got"
    [ "$got" = dead-letter ] || rc=1
    return $rc
}
check "completions: bash (works), zsh and fish installed" completions_ok

monitoring_ok() {
    for f in "$RULES" "$DASHBOARD"; do
        [ -s "$f" ] || { echo "missing: $f"; return 1; }
    done
    if command -v promtool >/dev/null 2>&1; then
        promtool check rules "$RULES" || return 1
    else
        echo "promtool not installed: rules checked by .ci/run only"
    fi
}
check "monitoring: the alert rules and the dashboard are installed" monitoring_ok

# ===================== .deb: upgrade keeps config and queue =====================
# The administrator enables the service (systemctl works offline, without
# systemd running); the upgrade must keep that, and purge must undo it.
WANTS=/etc/systemd/system/multi-user.target.wants/$PKG.service
check "deb: systemctl enable (as the admin would) creates the link" \
    sh -c "systemctl enable '$PKG' && [ -L '$WANTS' ]"
echo "# edited by check.sh" >>"$CONF"
echo "queued" >"$STATE/check-marker"
# A newer revision of the same package, so that this is a real upgrade.
mkdir -p "$work/v2"
upgrade_ok() {
    cargo deb --no-build --deb-revision 2 --output "$work/v2/" || return 1
    dpkg -i --force-confold "$work"/v2/*.deb || return 1
    dpkg-query -W -f '${Version}\n' "$PKG" | grep -q -- '-2$' || { echo "not upgraded"; return 1; }
    grep -qx '# edited by check.sh' "$CONF" || { echo "edited config lost"; return 1; }
    [ -f "$STATE/check-marker" ] || { echo "queue lost"; return 1; }
    [ "$(stat -c '%a %U:%G' "$CONF")" = "640 root:$PKG" ] || { echo "config owner/mode changed"; return 1; }
    [ -L "$WANTS" ] || { echo "the service is no longer enabled"; return 1; }
}
check "deb: upgrade $version -> revision 2 keeps the edited config, its owner, the queue and the enablement" upgrade_ok
check "deb: reinstall of the same version keeps the edited config" \
    sh -c "dpkg -i --force-confold $work/v2/*.deb && grep -qx '# edited by check.sh' '$CONF'"

# ===================== .deb: remove, purge =====================
remove_ok() {
    dpkg -r "$PKG" || return 1
    [ ! -e "/usr/bin/$PKG" ] || { echo "binary still there"; return 1; }
    grep -qx '# edited by check.sh' "$CONF" || { echo "config not kept"; return 1; }
    [ -f "$ENVFILE" ] || { echo "env file not kept"; return 1; }
    [ -f "$STATE/check-marker" ] || { echo "queue not kept"; return 1; }
}
check "deb: dpkg -r removes the binary, keeps config, env file and queue" remove_ok
purge_ok() {
    dpkg -P "$PKG" || return 1
    [ ! -e "/etc/$PKG" ] || { echo "/etc/$PKG left"; ls -la "/etc/$PKG"; return 1; }
    [ ! -e "$STATE" ] || { echo "$STATE left"; return 1; }
    [ ! -e "$UNIT" ] || { echo "unit left"; return 1; }
    getent passwd "$PKG" >/dev/null || { echo "user deleted (it must be kept)"; return 1; }
    # No enable link nor the mask that remove left (deb-systemd-helper purge).
    for link in "$WANTS" "/etc/systemd/system/$PKG.service"; do
        if [ -L "$link" ] || [ -e "$link" ]; then echo "left: $link"; return 1; fi
    done
}
check "deb: dpkg -P removes config, queue and enable links, keeps the user" purge_ok
installed_by_us=no

# ===================== .rpm =====================
rpm_layout() {
    rpm -qip "$rpm" || return 1
    rpm -qplv "$rpm" | tee "$work/rpm-list"
    rc=0
    for entry in "-rwxr-xr-x root root /usr/bin/$PKG" \
                 "-rw-r--r-- root root $UNIT" \
                 "-rw-r----- root $PKG $CONF" \
                 "-rw------- root root $ENVFILE" \
                 "-rw-r--r-- root root /usr/share/man/man1/$PKG.1.gz" \
                 "-rw-r--r-- root root /usr/share/man/man1/$PKG-run.1.gz" \
                 "-rw-r--r-- root root $BASH_COMPLETION" \
                 "-rw-r--r-- root root $ZSH_COMPLETION_RPM" \
                 "-rw-r--r-- root root $FISH_COMPLETION" \
                 "-rw-r--r-- root root $RULES" \
                 "-rw-r--r-- root root $DASHBOARD"; do
        # shellcheck disable=SC2086 # "MODE USER GROUP PATH" splits into four
        set -- $entry
        # rpm -qplv cuts names to 8 characters: compare the group by prefix.
        awk -v m="$1" -v u="$2" -v g="$3" -v p="$4" \
            '$1 == m && $3 == u && index(g, $4) == 1 && $NF == p { found = 1 } END { exit !found }' \
            "$work/rpm-list" || { echo "missing or wrong: $entry"; rc=1; }
    done
    return $rc
}
check "rpm: layout, owners and modes (rpm -qip, -qplv)" rpm_layout

rpm_config() {
    rpm -qpc "$rpm"
    rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" | tee "$work/fflags"
    grep -qx "cn $CONF" "$work/fflags" && grep -qx "cn $ENVFILE" "$work/fflags"
}
check "rpm: %config(noreplace) on both files in /etc" rpm_config

rpm_scripts() {
    rpm -qp --scripts "$rpm" | tee "$work/scripts"
    for s in preinstall postinstall preuninstall postuninstall; do
        grep -q "^$s scriptlet" "$work/scripts" || { echo "no $s scriptlet"; return 1; }
    done
    grep -q 'useradd --system' "$work/scripts" || { echo "%pre does not create the user"; return 1; }
    # Install must not enable nor start: no preset/enable/start in %post.
    # (The here document between <<'MSG' and MSG is the message to the admin.)
    sed -n '/^postinstall scriptlet/,/^preuninstall scriptlet/p' "$work/scripts" |
        sed "/<<'MSG'/,/^MSG\$/d" | grep -E '^[^#]*systemctl[^#]*(preset|enable|start)' && return 1
    return 0
}
check "rpm: scriptlets (pre/post/preun/postun, user in %pre, no start on install)" rpm_scripts

rpm_root() {
    root=$work/rpmroot
    mkdir -p "$root/etc"
    rpm --root "$root" --initdb || return 1
    # --noscripts: %pre cannot run in an empty root (no /bin/sh there), so
    # stand in for it with the user and group it would create; rpm resolves
    # the config file's group from the root's /etc/group.
    printf 'root:x:0:0:root:/root:/bin/sh\n%s:x:990:990::/nonexistent:/sbin/nologin\n' "$PKG" >"$root/etc/passwd"
    printf 'root:x:0:\n%s:x:990:\n' "$PKG" >"$root/etc/group"
    rpm --root "$root" -ivh --nodeps --noscripts "$rpm" || return 1
    echo "rpm -V:"
    # --nodeps: the root has no glibc package to satisfy Requires.
    out=$(rpm --root "$root" -V --nodeps "$PKG" 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
    got=$(stat -c '%a %u:%g' "$root$CONF")
    echo "config.toml: $got"
    [ "$got" = "640 0:990" ]
}
check "rpm: install into an rpm --root folder, then rpm -V" rpm_root

rpm_scriptlets_run() {
    # The packaged scriptlets, run for real on this machine as rpm would run
    # them (sh, $1 = install count): %pre and %post of an install, then %preun
    # and %postun of an erase. The deb is purged by now; the user it left is
    # deleted first when this run created it, so that %pre has to create it.
    if [ "$user_existed" = no ] && getent passwd "$PKG" >/dev/null; then
        userdel "$PKG" || return 1
        if getent group "$PKG" >/dev/null; then groupdel "$PKG" || return 1; fi
    fi
    for tag in PREIN POSTIN PREUN POSTUN; do
        rpm -qp --qf "%{$tag}" "$rpm" >"$work/$tag.sh" || return 1
    done
    sh -e "$work/PREIN.sh" 1 || { echo "%pre failed"; return 1; }
    getent passwd "$PKG" || { echo "%pre created no user"; return 1; }
    [ "$(getent passwd "$PKG" | cut -d: -f7)" = /sbin/nologin ] || { echo "user has a login shell"; return 1; }
    sh -e "$work/POSTIN.sh" 1 >"$work/post-out" || { echo "%post failed"; return 1; }
    cat "$work/post-out"
    grep -q 'systemctl enable --now jcdi-forwarder' "$work/post-out" || { echo "no post-install message"; return 1; }
    got=$(stat -c '%a %U:%G' "$STATE") || return 1
    echo "$STATE: $got"
    [ "$got" = "750 $PKG:$PKG" ] || { echo "  expected: 750 $PKG:$PKG"; return 1; }
    sh -e "$work/PREUN.sh" 0 || { echo "%preun failed"; return 1; }
    sh -e "$work/POSTUN.sh" 0 || { echo "%postun failed"; return 1; }
    [ -d "$STATE" ] || { echo "erase removed the queue"; return 1; }
    rm -rf "$STATE"
}
rpm_scripts_ran=yes
check "rpm: scriptlets run with sh (%pre creates the user, %post the queue folder, erase keeps it)" rpm_scriptlets_run

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
