"""Who owns which partition: membership, leases, the fair-share balance and partition owners.

``membership`` (members, heartbeats, fencing), ``leases`` (advisory locks on the owners'
connections), ``balance`` (the pure fair-share plan), ``coordinator`` (the loop that runs them
every lease interval) and ``owner`` (one owned partition and its states).
"""
