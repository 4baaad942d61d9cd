"""Every PostgreSQL advisory-lock key the product takes, in one table, so none collide.

Advisory locks share one key space per database. Two-key locks are ``(class, key)``; a class
names the kind of lock and reads as two ASCII letters.

| lock | keys | held by | for |
| --- | --- | --- | --- |
| migration | ``MIGRATION`` (one key) | a transaction running migrations | one migrator at a time |
| member | ``(MEMBER_CLASS, crc32(member id))`` | a member's control connection | membership |
| lease | ``(LEASE_CLASS, partition)`` | the partition owner's connection | one owner |
| replay swap | ``REPLAY_SWAP`` | a ``replay --swap`` session | one swap at a time |
| child | ``(CHILD_CLASS, child_lock_key(d))`` | making data keys; erasing | no key after erasure |
"""

from __future__ import annotations

from typing import Final

#: Serialises migrations when several processes start at once ("migr").
MIGRATION: Final = 0x6D69_6772
#: First key of a member's lock; the second is ``ownership.membership.member_lock_key`` ("me").
MEMBER_CLASS: Final = 0x6D65
#: First key of a partition's lease; the second is the partition number ("pa").
LEASE_CLASS: Final = 0x7061
#: The lock of a swapping replay, one per database ("rp").
REPLAY_SWAP: Final = (0x7270, 0)
#: First key of a child's lock; the second is ``child_lock_key(user digest)`` ("ch").
CHILD_CLASS: Final = 0x6368


def child_lock_key(user_digest: bytes) -> int:
    """The second key of a child's lock: the first 4 bytes of the child's keyed hash
    (``processor.privacy.keys.Keys.user_digest``) as a signed 32-bit integer.

    Two children may share a key (1 in 2**32): they then wait for each other, nothing worse.
    """
    return int.from_bytes(user_digest[:4], "big", signed=True)
