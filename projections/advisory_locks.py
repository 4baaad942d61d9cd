"""Every PostgreSQL advisory-lock key the product takes, in one table, so none collide.

Advisory locks share one key space per database. Two-key locks are ``(class, key)``; a class
names the kind of lock and reads as two ASCII letters.

| lock | keys | held by | for |
| --- | --- | --- | --- |
| migration | ``MIGRATION`` (one key) | a transaction running migrations | one migrator at a time |
| member | ``(MEMBER_CLASS, crc32(member id))`` | a member's control connection | membership |
| lease | ``(LEASE_CLASS, partition)`` | the partition owner's connection | one owner |
| replay swap | ``REPLAY_SWAP`` | a ``replay --swap`` session | one swap at a time |
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
