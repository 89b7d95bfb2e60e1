# shellcheck shell=sh
# %pre of jcdi-forwarder (.rpm); $1 is 1 on install, 2 on upgrade.
# The system user and group, before the files are laid down (rpm gives
# config.toml to group jcdi-forwarder) and before the unit can ever start.
# Kept on erase: files in the queue or in backups may still belong to its uid.
if ! getent group jcdi-forwarder >/dev/null; then
    groupadd --system jcdi-forwarder
fi
if ! getent passwd jcdi-forwarder >/dev/null; then
    useradd --system --gid jcdi-forwarder --home-dir /nonexistent --no-create-home \
        --shell /sbin/nologin --comment "jcdi-forwarder service" jcdi-forwarder
fi
