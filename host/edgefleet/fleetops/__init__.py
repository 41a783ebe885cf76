"""Running a fleet (issue 13): the device registry (devices.py) and commands to nodes (commands.py).

The registry keeps, in the fleet database, what each device is and what the broker needs to let it in; it renders
the broker's password file and ACL from that and makes a running broker reload them. Commands go to the
devices the registry names, over the operator's broker identity. docs/fleet.md explains both.
"""
