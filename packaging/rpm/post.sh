# shellcheck shell=sh
# %post of jcdi-forwarder (.rpm); $1 is 1 on install, 2 on upgrade.
# Like %systemd_post, minus the preset: install never enables nor starts the
# service, because it needs credentials first.
# The queue folder. StateDirectory= creates it at start too; making it now
# means that "validate", run by root before the first start, finds it with its
# real owner and mode instead of creating it root:root 0755. An existing one
# (upgrade) is left as it is. Not in the payload, so rpm -e keeps the queue.
if [ ! -d /var/lib/jcdi-forwarder ]; then
    install -d -m 0750 -o jcdi-forwarder -g jcdi-forwarder /var/lib/jcdi-forwarder
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    cat <<'MSG'
jcdi-forwarder is installed but not started: it needs credentials first.
  1. Put the keys in /etc/jcdi-forwarder/jcdi-forwarder.env:
       JUMPCLOUD_API_KEY=...   (JumpCloud administrator API key)
       SEKOIA_INTAKE_KEY=...   (Sekoia.io intake key)
  2. Review /etc/jcdi-forwarder/config.toml (region, services, queue size).
  3. Check the configuration, then start the service:
       set -a; . /etc/jcdi-forwarder/jcdi-forwarder.env; set +a
       jcdi-forwarder validate --config /etc/jcdi-forwarder/config.toml
       systemctl enable --now jcdi-forwarder
MSG
fi
