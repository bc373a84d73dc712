"""Playbooks (CONTRACT §5): load and check (`loading`, `spec`, `validators`, `locate`), params
(`params`), templates and how a value is put into a command without becoming code
(`templates`, `shell`, `shell_scanner`, `command`), rendering a step (`render`), and running a
run on the fleet one step task at a time (`run`, `steps`, `handoff`, `slots`)."""
