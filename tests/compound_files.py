"""OLE2 compound files ("[MS-CFB] Compound File Binary File Format", version 3 with 512-byte sectors
or version 4 with 4096-byte ones) for tests: the container of Olympus OIB files. No maintained
Python library writes one (olefile rewrites streams of an existing file, in place).

The layout: a 512-byte header (in a sector of its own), then sectors (sector ``n`` at byte
``size * (n + 1)``).
The FAT chains each stream's sectors; streams under ``MINI_CUTOFF`` bytes live in 64-byte mini
sectors inside the root entry's own stream (the mini stream), chained by the mini FAT; the
directory is an array of 128-byte entries, each storage's children a binary search tree by
(length, upper-cased name) through their left/right sibling ids.
"""

from __future__ import annotations

import struct

SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
MINI_SECTOR = 64
MINI_CUTOFF = 4096
FREE, END, FAT_SECTOR, DIFAT_SECTOR, NO_STREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFC, 0xFFFFFFFF
_STORAGE, _STREAM, _ROOT = 1, 2, 5


class _Entry:
    def __init__(self, name: str, kind: int, data: bytes = b"") -> None:
        self.name, self.kind, self.data = name, kind, data
        self.children: dict[str, _Entry] = {}
        self.left = self.right = self.child = NO_STREAM
        self.start, self.size = END, 0


def write_compound(streams: dict[str, bytes], *, sibling_chain: bool = False, version: int = 3) -> bytes:
    """A compound file holding ``streams`` by path (``"OibInfo.txt"``, ``"Storage00001/Stream00001"``:
    storages are made for the folders). ``sibling_chain``: each storage's children linked as one
    right-leaning chain instead of a balanced tree (as deep as it is long: no red-black tree is).
    ``version``: 3 (512-byte sectors, what FluoView writes) or 4 (4096-byte sectors)."""
    sector = 512 if version == 3 else 4096
    root = _Entry("Root Entry", _ROOT)
    for path, data in streams.items():
        *folders, name = path.split("/")
        parent = root
        for folder in folders:
            parent = parent.children.setdefault(folder, _Entry(folder, _STORAGE))
        parent.children[name] = _Entry(name, _STREAM, data)
    entries = [root]
    _number(root, entries, sibling_chain)

    sectors: list[bytes] = []  # regular sectors, in order
    fat: list[int] = []

    def allocate(data: bytes) -> int:
        if not data:
            return END
        first = len(sectors)
        count = -(-len(data) // sector)
        for k in range(count):
            sectors.append(data[k * sector:(k + 1) * sector].ljust(sector, b"\0"))
            fat.append(first + k + 1 if k + 1 < count else END)
        return first

    mini = bytearray()
    mini_fat: list[int] = []
    for entry in entries:
        if entry.kind != _STREAM:
            continue
        entry.size = len(entry.data)
        if entry.size >= MINI_CUTOFF:
            entry.start = allocate(entry.data)
        elif entry.size:
            first = len(mini) // MINI_SECTOR
            count = -(-entry.size // MINI_SECTOR)
            mini += entry.data.ljust(count * MINI_SECTOR, b"\0")
            mini_fat += [first + k + 1 if k + 1 < count else END for k in range(count)]
            entry.start = first
    root.start, root.size = allocate(bytes(mini)), len(mini)
    mini_fat_start = allocate(struct.pack(f"<{len(mini_fat)}I", *mini_fat)) if mini_fat else END
    mini_fat_sectors = -(-len(mini_fat) * 4 // sector)
    directory = b"".join(_entry_bytes(e) for e in entries)
    directory_sectors = -(-len(directory) // sector)
    directory_start = allocate(directory.ljust(directory_sectors * sector, b"\0"))

    # The FAT's own sectors come last, then the DIFAT's (listing the FAT sectors the header's 109
    # slots cannot), each kind marked as such in the FAT.
    per_sector = sector // 4
    fat_sectors = difat_sectors = 0
    while True:
        need_fat = -(-(len(fat) + fat_sectors + difat_sectors) // per_sector)
        need_difat = max(0, -(-(need_fat - 109) // (per_sector - 1)))
        if (need_fat, need_difat) == (fat_sectors, difat_sectors):
            break
        fat_sectors, difat_sectors = need_fat, need_difat
    fat_start = len(fat)
    difat_start = fat_start + fat_sectors
    fat += [FAT_SECTOR] * fat_sectors + [DIFAT_SECTOR] * difat_sectors
    fat += [FREE] * (fat_sectors * per_sector - len(fat))
    for k in range(fat_sectors):
        sectors.append(struct.pack(f"<{per_sector}I", *fat[k * per_sector:(k + 1) * per_sector]))
    fat_ids = [fat_start + k for k in range(fat_sectors)]
    rest = fat_ids[109:]
    for k in range(difat_sectors):
        listed = rest[k * (per_sector - 1):(k + 1) * (per_sector - 1)]
        following = difat_start + k + 1 if k + 1 < difat_sectors else END
        listed += [FREE] * (per_sector - 1 - len(listed))
        sectors.append(struct.pack(f"<{per_sector}I", *listed, following))
    difat = fat_ids[:109] + [FREE] * (109 - min(fat_sectors, 109))

    header = (
        SIGNATURE + b"\0" * 16
        + struct.pack("<HHHHH", 0x3E, version, 0xFFFE, 9 if version == 3 else 12, 6) + b"\0" * 6
        + struct.pack("<IIIIIIIII", 0 if version == 3 else directory_sectors, fat_sectors, directory_start, 0,
                      MINI_CUTOFF, mini_fat_start, mini_fat_sectors,
                      difat_start if difat_sectors else END, difat_sectors)
        + struct.pack("<109I", *difat)
    )
    assert len(header) == 512
    return header.ljust(sector, b"\0") + b"".join(sectors)


def _number(storage: _Entry, entries: list[_Entry], chain: bool) -> None:
    """Give ``storage``'s children directory ids and sibling links, then theirs."""
    kids = sorted(storage.children.values(), key=lambda e: (len(e.name), e.name.upper()))
    for kid in kids:
        entries.append(kid)
    ids = {id(kid): entries.index(kid) for kid in kids}

    def tree(part: list[_Entry]) -> int:
        if not part:
            return NO_STREAM
        if chain:
            for here, after in zip(part, part[1:], strict=False):
                here.right = ids[id(after)]
            return ids[id(part[0])]
        middle = len(part) // 2
        node = part[middle]
        node.left, node.right = tree(part[:middle]), tree(part[middle + 1:])
        return ids[id(node)]

    storage.child = tree(kids)
    for kid in kids:
        if kid.kind == _STORAGE:
            _number(kid, entries, chain)


def _entry_bytes(entry: _Entry) -> bytes:
    name = entry.name.encode("utf-16-le") + b"\0\0"
    assert len(name) <= 64, entry.name
    return (
        name.ljust(64, b"\0")
        + struct.pack("<HBBIII", len(name), entry.kind, 1, entry.left, entry.right, entry.child)
        + b"\0" * 16 + b"\0" * 4 + b"\0" * 16
        + struct.pack("<IQ", entry.start, entry.size)
    )
