# shellcheck shell=sh
# %preun of jcdi-forwarder (.rpm); $1 is 0 on erase, 1 on upgrade.
# Like %systemd_preun: on erase, stop and disable the service (the agent
# flushes its queue on SIGTERM). Nothing on upgrade: %postun restarts it.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now jcdi-forwarder.service >/dev/null 2>&1 || :
fi
