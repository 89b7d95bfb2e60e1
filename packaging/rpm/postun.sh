# shellcheck shell=sh
# %postun of jcdi-forwarder (.rpm); $1 is 0 on erase, 1 on upgrade.
# Like %systemd_postun_with_restart: reload units, and on upgrade restart the
# service if it was running, so the new binary takes over.
# On erase, rpm keeps edited config files as *.rpmsave and nothing removes
# the queue in /var/lib/jcdi-forwarder: rpm has no "purge" (see install.md).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart jcdi-forwarder.service >/dev/null 2>&1 || :
    fi
fi
