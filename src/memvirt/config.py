"""One typed configuration schema: TOML files plus ``--set key=value`` overrides.

Every cost parameter has a name, a unit (in its name or description), a default
and a comment saying where the default comes from.  The defaults describe a
Nehalem-class machine like the one of the selective-paging study (VEE 2011);
``profiles/*.toml`` hold named machines (``--profile nehalem-2010``, ``modern``).
"""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class _Section(BaseModel):
    # Non-finite floats (inf, nan) are refused everywhere: they would make cycles NaN.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Sane maxima for simulated structures: beyond them the tables would not fit in memory.
MAX_ENTRIES = 1 << 24
MAX_WAYS = 64
MAX_PERIOD = 1 << 62  # instruction counts are int64


class CacheGeometry(_Section):
    """A set-associative LRU structure; ``entries = 0`` disables it."""

    entries: int = Field(64, ge=0, le=MAX_ENTRIES,
                         description="number of entries (sets x ways); 0 disables")
    ways: int = Field(4, ge=1, le=MAX_WAYS, description="associativity")

    @model_validator(mode="after")
    def _sets_power_of_two(self):
        if self.entries:
            if self.entries % self.ways:
                raise ValueError(f"entries ({self.entries}) must be a multiple of ways ({self.ways})")
            sets = self.entries // self.ways
            if sets & (sets - 1):
                raise ValueError(f"entries/ways = {sets} sets must be a power of two")
        return self

    @property
    def sets(self) -> int:
        return self.entries // self.ways if self.entries else 0


def _geom(entries: int, ways: int, doc: str):
    return Field(default_factory=lambda: CacheGeometry(entries=entries, ways=ways), description=doc)


class GuestConfig(_Section):
    levels: int = Field(4, description="guest page-table levels: 2 (32-bit), 3 (PAE), 4, 5 (LA57)")
    munmap_flush_ceiling: int = Field(
        33, ge=0, le=1 << 31,
        description="pages above which munmap flushes the whole TLB instead of per-page INVLPG "
        "(Linux tlb_single_page_flush_ceiling = 33)",
    )
    max_processes: int = Field(4096, ge=1, le=4096, description="processes alive at once (ASID slots)")
    memory_mib: int = Field(
        3072, ge=16, le=1 << 22,
        description="guest physical memory in MiB: the frames the guest allocates data and "
        "page-table pages from (the study's guests had 3 GB)")
    frame_order: Literal["buddy", "scattered", "sequential"] = Field(
        "buddy", description="order of the guest's free frames at the start: buddy (a Linux "
        "guest that has been running: aligned runs of 32 consecutive frames, the runs from all "
        "over memory in a fixed pseudo-random order, as Linux's per-CPU page lists refilled 31 "
        "pages at a time from buddy blocks hand them out: mm/page_alloc.c zone_batchsize in "
        "2.6.18), scattered (no contiguity at all: a fixed pseudo-random permutation of the "
        "frames, a fragmented worst case) or sequential (frame 0, 1, 2...: a fresh guest); "
        "freed frames are reused first (LIFO), as Linux's per-CPU page lists")
    highpte: bool | None = Field(
        None, description="page-table pages in high memory (32-bit Linux CONFIG_HIGHPTE): the "
        "kernel maps each page-table page it works on through a temporary kmap_atomic mapping "
        "(a fixmap PTE write, and an INVLPG when it is unmapped), which trap under shadow "
        "paging; null: on for 2-level (32-bit) guests, off otherwise")

    @field_validator("levels")
    @classmethod
    def _levels(cls, v):
        if v not in (2, 3, 4, 5):
            raise ValueError("must be 2, 3, 4 or 5")
        return v

    @property
    def va_bits(self) -> int:
        return {2: 32, 3: 32, 4: 48, 5: 57}[self.levels]

    @property
    def frames(self) -> int:
        return self.memory_mib * 256

    @property
    def uses_highpte(self) -> bool:
        return self.levels == 2 if self.highpte is None else self.highpte


# host.page_size: the sizes an EPT (or AMD NPT) leaf maps (Intel SDM vol. 3, 28.2.2)
HOST_PAGE_SIZES = {4096: "4 KiB", 2097152: "2 MiB", 1073741824: "1 GiB"}


class HostConfig(_Section):
    ept_levels: int = Field(4, description="nested (EPT/NPT) table levels: 4 or 5")
    page_size: Literal[4096, 2097152, 1073741824] = Field(
        4096, description="host page size backing guest memory in bytes: 4096 (4 KiB), "
        "2097152 (2 MiB: the EPT walk ends at the PDE, bit 7 set) or 1073741824 (1 GiB: it "
        "ends at the PDPTE, bit 7 set; Intel SDM vol. 3, 28.2.2; AMD nested paging likewise; "
        "KVM on 1 GiB hugetlbfs pages); demand population backs a whole host page per exit"
    )
    populate: Literal["boot", "demand"] = Field(
        "boot", description="when guest memory gets host frames: boot (every frame backed when "
        "the VM is built, as Xen 3.3's domain builder did: no EPT violations later) or demand "
        "(on the guest's first use of a frame, one exit each: an EPT violation under nested "
        "paging, a populate fault under shadow paging, as KVM)")

    @field_validator("ept_levels")
    @classmethod
    def _levels(cls, v):
        if v not in (4, 5):
            raise ValueError("must be 4 or 5")
        return v

    @field_validator("page_size", mode="before")
    @classmethod
    def _page_size(cls, v):
        # 1 GiB pages need an EPT PDPT level: 4- and 5-level EPTs (the only ones allowed) have
        # one, so every allowed size works with every allowed ept_levels
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in HOST_PAGE_SIZES:
            raise ValueError("must be one of " + ", ".join(
                f"{size} ({name})" for size, name in HOST_PAGE_SIZES.items()))
        return v


class HardwareConfig(_Section):
    itlb: CacheGeometry = _geom(128, 4, "L1 instruction TLB, 4 KiB pages (Nehalem: 128, 4-way)")
    dtlb: CacheGeometry = _geom(64, 4, "L1 data TLB, 4 KiB pages (Nehalem: 64, 4-way)")
    stlb: CacheGeometry = _geom(512, 4, "unified L2 TLB (Nehalem STLB: 512, 4-way)")
    psc: CacheGeometry = _geom(
        32, 4, "paging-structure cache per upper level (PML4E/PDPTE/PDE caches), "
        "per Intel SDM 4.10.3; sizes are not published, 32 is a common estimate"
    )
    nested_tlb: CacheGeometry = _geom(
        32, 4, "nested TLB gPA->hPA used by 2D walks (Bhargava et al. ASPLOS 2008)"
    )
    nested_psc: CacheGeometry = _geom(
        16, 4, "paging-structure cache per upper EPT level (nested dimension)"
    )
    l1d: CacheGeometry = _geom(512, 8, "L1 data cache in 64-byte lines (Nehalem: 32 KiB, 8-way)")
    l2: CacheGeometry = _geom(4096, 8, "L2 cache in 64-byte lines (Nehalem: 256 KiB, 8-way)")
    l3: CacheGeometry = _geom(131072, 16, "L3 cache in 64-byte lines (Core i7-860: 8 MiB, "
                              "16-way, shared)")
    walks_in_l1d: bool = Field(True, description="page-walk references look up the L1D first "
                               "(Intel's page-miss handler loads through the L1D)")
    data_caches: bool = Field(True, description="program data accesses go through the caches "
                              "(and compete with walk references); false: only walk references "
                              "do and data costs the flat base CPI (faster to simulate)")
    pcid: bool = Field(False, description="TLB entries tagged by address space (no flush on CR3 "
                       "load); Nehalem has no PCID (it came with Westmere)")
    vpid: bool = Field(True, description="TLB entries tagged by VM (no flush on VM exit/entry)")


class VmmConfig(_Section):
    out_of_sync: bool = Field(
        True, description="Xen Shadow 3: leaf shadow pages go out of sync; writes to them stop "
        "trapping until the next CR3 load (on by default in Xen 3.3)"
    )
    oos_pages: int = Field(3, ge=1, le=4096, description="out-of-sync pages at once (Xen SHADOW_OOS_PAGES)")
    shadow_prefetch: int = Field(
        32, ge=0, le=512, description="guest entries after the faulting one that a hidden fault "
        "also shadows, stopping at the end of the leaf table or at an entry already shadowed "
        "(Xen sh_prefetch, PREFETCH_DISTANCE = 32); 0 disables")
    pae_shadows: bool | None = Field(
        None, description="shadow a 2-level (32-bit) guest with PAE-format shadow tables "
        "(8-byte entries, 512 per table, the 4 PDPTEs loaded into registers on a CR3 load), as "
        "Xen does ('2-on-3'); null: on for 2-level guests")
    exit_code_pages: int = Field(
        16, ge=0, le=4096, description="pages of VMM code each VM exit runs through (the exit "
        "and entry path and the handler): each is a VMM-tagged ITLB/STLB entry that may evict a "
        "guest entry")
    exit_data_pages: int = Field(
        16, ge=0, le=4096, description="pages of VMM data each VM exit touches (per-vCPU state, "
        "the VMCS, shadow and p2m structures): VMM-tagged DTLB/STLB entries")
    exit_lines: int = Field(
        64, ge=0, le=1 << 16, description="64-byte lines of VMM data each VM exit touches, "
        "brought into the L1D/L2/L3 over the guest's lines")


class CostConfig(_Section):
    """Cycles per event.  Defaults: a 2.8 GHz Nehalem (Core i7-860) running Xen 3.3, the
    study's machine; the VMM handler costs (hv_pf_true, hv_pf_hidden, hv_pte_write) are
    calibrated so that a guest fault costs ~27,000 cycles more under shadow paging than
    under nested paging, as measured in the study (``memvirt calibrate``;
    profiles/nehalem-2010.toml documents every value)."""

    base_cpi: float = Field(
        1.0, ge=0, description="cycles per instruction with perfect translation "
        "(SPEC CPU2006 mean CPI on Nehalem is about 1)"
    )
    stlb_hit: float = Field(7.0, ge=0, description="cycles for an L1 TLB miss that hits the L2 TLB "
                            "(Intel optimization manual, Nehalem STLB: 7)")
    walk_base: float = Field(2.0, ge=0, description="fixed cycles per page walk (walker start-up)")
    l1d_latency: float = Field(4.0, ge=0, description="load-to-use cycles of an L1D hit "
                               "(Nehalem: 4; Intel optimization manual)")
    l2_latency: float = Field(10.0, ge=0, description="cycles of an L2 hit (Nehalem: 10)")
    l3_latency: float = Field(38.0, ge=0, description="cycles of an L3 hit (Nehalem: ~35-40)")
    dram_latency: float = Field(
        200.0, ge=0, description="cycles of a load served by DRAM (Nehalem with DDR3: ~65 ns "
        "after the L3 miss, ~200 cycles at 2.8 GHz)")
    data_stall_fraction: float = Field(
        0.5, ge=0, le=1, description="share of a data access's latency beyond the L1D that "
        "stalls the core (out-of-order execution overlaps the rest with other work; walk "
        "references, a chain of dependent loads, stall in full)")
    psc_hit: float = Field(0.0, ge=0, description="extra cycles for a paging-structure-cache hit")
    nested_tlb_hit: float = Field(1.0, ge=0, description="cycles per nested TLB hit in a 2D walk")
    guest_fault: float = Field(
        3000.0, ge=0, description="guest kernel demand-fault handler incl. zeroing the page "
        "(~1 us on Linux 2.6, native)")
    guest_cow_fault: float = Field(
        4000.0, ge=0, description="guest copy-on-write fault incl. copying 4 KiB")
    guest_syscall: float = Field(
        500.0, ge=0, description="guest mmap/munmap/brk syscall path excluding PTE work")
    guest_pte_update: float = Field(
        20.0, ge=0, description="guest cycles per PTE written/cleared in bulk (fork, munmap, exit)")
    guest_context_switch: float = Field(
        2000.0, ge=0, description="guest scheduler context switch incl. CR3 load (native ~1-2 us)")
    guest_process: float = Field(
        50000.0, ge=0, description="guest fork/exec/exit fixed work (native, ~20 us)")
    invlpg: float = Field(100.0, ge=0, description="cycles of one INVLPG (native)")
    tlb_flush: float = Field(200.0, ge=0, description="cycles of a full TLB flush (native)")
    vm_exit: float = Field(
        2000.0, ge=0, description="VM exit + VM entry round trip on Nehalem (SplitX, WIOV 2011; "
        "KVM on Sandy Bridge-E: 1,600-1,700 cycles for an empty VMCALL)")
    hv_pf_true: float = Field(
        5000.0, ge=0, description="VMM work for a true guest fault under shadow: walk the guest "
        "table, find it not present, inject the #PF")
    hv_pf_hidden: float = Field(
        6000.0, ge=0, description="VMM work for a hidden fault: walk the guest table and fill the "
        "shadow path (Xen sh_page_fault)")
    hv_pte_write: float = Field(
        10000.0, ge=0, description="VMM work to emulate a write to a write-protected guest "
        "page-table page and propagate it to the shadow (x86 emulator + validation)")
    hv_unsync: float = Field(
        3000.0, ge=0, description="VMM work for the first write to an in-sync leaf page-table "
        "page with out-of-sync shadows (Xen 3.3 Shadow 3, sh_unsync): the page is marked out "
        "of sync and given write access, the write is not emulated (estimate: a fault exit's "
        "handler without the guest walk and shadow build)")
    hv_cr3: float = Field(3000.0, ge=0, description="VMM work for a guest CR3 load under shadow")
    hv_invlpg: float = Field(2000.0, ge=0, description="VMM work for a guest INVLPG under shadow")
    hv_ept_violation: float = Field(
        3000.0, ge=0, description="VMM work to back a guest frame with a host frame")
    hv_shadow_page_free: float = Field(
        500.0, ge=0, description="VMM work per shadow page torn down (process exit, mode switch)")
    hv_shadow_prefetch: float = Field(
        150.0, ge=0, description="VMM work per shadow entry prefetched by a hidden fault (read "
        "and validate one guest PTE, write one shadow entry; estimate)")
    hv_oos_resync: float = Field(
        3000.0, ge=0, description="VMM work to resync one out-of-sync leaf shadow page")
    hv_process: float = Field(
        10000.0, ge=0, description="VMM work to set up or tear down a process's shadow root")
    mode_switch: float = Field(
        100000.0, ge=0, description="VMM work to switch the VM between shadow and nested "
        "(reload roots, flush, pause/resume the vCPU), excluding the shadow refill that follows")
    hv_agile_move: float = Field(
        2000.0, ge=0, description="agile paging: VMM work to move one page-table subtree between "
        "shadow and nested (rewrite its switching entry, drop or start its shadows, flush the "
        "paging-structure caches); shadow pages freed are priced by hv_shadow_page_free.  An "
        "estimate: about one shadow fill (Gandhi et al., ISCA 2016, give no cycle figure)")
    hv_agile_scan: float = Field(
        200.0, ge=0, description="agile paging: VMM work per nested subtree at a periodic scan "
        "(read and clear the dirty bits of the EPT entries that map its page-table pages; "
        "estimate)")
    clock_ghz: float = Field(2.8, gt=0, description="clock for reporting ns (Core i7-860: 2.8 GHz)")


class SelectiveConfig(_Section):
    period_instructions: int = Field(
        10_000_000, ge=1000, le=MAX_PERIOD,
        description="sampling period in retired instructions.  The study sampled every 5 s "
        "(~10^10 instructions); traces of 10^8-10^10 instructions need a shorter period to give "
        "10-1000 samples, while one period must still amortise a shadow refill: 10^7.")
    start_mode: Literal["nested", "shadow"] = Field("nested", description="mode of the first period")
    policy: str = Field("dsp", description="switching policy: static, dsp, cost, oracle, or module:Class")
    policy_params: dict[str, Any] = Field(default_factory=dict, description="policy parameters")


class AgileConfig(_Section):
    """Agile paging (``--mode agile``; Gandhi, Hill, Swift, ISCA 2016).  ``policy`` names the
    defaults below as a whole (``memvirt.policy.agile``); the other keys override its values."""
    policy: str = Field(
        "paper", description="agile policy: paper (the paper's), all-shadow, all-nested, or "
        "module:Class (an AgilePolicy subclass)")
    write_threshold: int | None = Field(
        None, ge=-1, le=1 << 30,
        description="a shadowed page-table page moves (with its subtree) to nested after more "
        "than this many writes between two scans (paper: 1, 'written more than once'); -1: never")
    start_nested: bool | None = Field(
        None, description="new address spaces start wholly nested and are shadowed only once "
        "a scan finds them clean and older than one scan interval (paper: short-lived "
        "processes stay nested)")
    move_back: bool | None = Field(
        None, description="a scan moves nested subtrees that were not written since the last "
        "scan (and are older than one interval) back to shadow (paper: yes)")
    scan_instructions: int | None = Field(
        None, ge=1000, le=MAX_PERIOD,
        description="instructions between scans (default 84,000,000: Xen's 30 ms credit-"
        "scheduler time slice at 2.8 GHz and about one instruction per cycle; the paper does "
        "not give its interval)")


class RunConfig(_Section):
    warmup_instructions: int = Field(
        0, ge=0, le=MAX_PERIOD,
        description="instructions simulated before measuring starts: they warm the guest's "
        "tables, the shadow/EPT state, TLBs and caches but are not counted in the steady-state "
        "figures (results give whole-run figures beside them).  The warm-up ends at the first "
        "sync point at or after this count")
    memory_budget_fraction: float = Field(
        0.8, ge=0.0, le=1000.0,
        description="share of the memory available (physical memory, or less under a cgroup "
        "limit or an address-space rlimit) that a run's estimated peak memory may take: a "
        "trace whose footprint is known (memvirt Parquet files record it) is refused before "
        "its first record when the estimate (bytes per distinct page touched per mode, "
        "memvirt.budget) is above it, as is an in-memory synthetic trace too large to build; "
        "0 turns the check off, above 1 counts on swap")


class Config(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    guest: GuestConfig = Field(default_factory=GuestConfig)
    host: HostConfig = Field(default_factory=HostConfig)
    hw: HardwareConfig = Field(default_factory=HardwareConfig)
    vmm: VmmConfig = Field(default_factory=VmmConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    selective: SelectiveConfig = Field(default_factory=SelectiveConfig)
    agile: AgileConfig = Field(default_factory=AgileConfig)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None,
             profile: str | None = None) -> Config:
        data: dict = {}
        if profile:
            data = _deep_merge(data, load_profile_dict(profile))
        if path:
            data = _deep_merge(data, _read_toml(Path(path)))
        if overrides:
            items = overrides.items() if isinstance(overrides, dict) else (
                _split_override(o) for o in overrides)
            for key, value in items:
                _set_dotted(data, key, value)
        return cls.from_dict(data, source=str(path) if path else None)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> Config:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_validation(e, source)) from None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: dict | list[str]) -> Config:
        data = copy.deepcopy(self.to_dict())
        items = overrides.items() if isinstance(overrides, dict) else (
            _split_override(o) for o in overrides)
        for key, value in items:
            _set_dotted(data, key, value)
        return Config.from_dict(data)


def profiles() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("memvirt.profiles").iterdir()
                  if p.name.endswith(".toml"))


def load_profile_dict(name: str) -> dict:
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return _read_toml(p)
    f = resources.files("memvirt.profiles") / f"{name}.toml"
    if not f.is_file():
        raise ConfigError(f"unknown machine profile '{name}'; known: {', '.join(profiles())}")
    return tomllib.loads(f.read_text())


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a TOML config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a TOML config file: not UTF-8 text (byte {e.start} "
                          f"is 0x{e.object[e.start]:02x})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    return key.strip(), parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """A TOML literal (1, 2.5, true, "x", [1,2]) or else the bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"bad config key '{key}'")
    # Check the path against the schema so a typo names the key, not a pydantic path.
    model: Any = Config
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            if isinstance(model, type) and issubclass(model, dict) or model is dict:
                break
            raise ConfigError(f"unknown config key '{key}' ('{'.'.join(parts[:i])}' has no fields)")
        if part not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; '{part}' is not one of: {', '.join(fields)}")
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else dict
        if model is dict and i < len(parts) - 1 and part != "policy_params":
            raise ConfigError(f"unknown config key '{key}': '{part}' is a value, not a section")
    d = data
    for part in parts[:-1]:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ConfigError(f"bad config key '{key}'")
    d[parts[-1]] = value


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_validation(e: ValidationError, source: str | None) -> str:
    msgs = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
        if err["type"] == "extra_forbidden":
            msgs.append(f"unknown config key '{key}'")
        else:
            msgs.append(f"config key '{key}': {err['msg']} (got {err.get('input')!r})")
    prefix = f"{source}: " if source else ""
    return prefix + "; ".join(msgs)


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) for every parameter, for docs and `memvirt config`."""
    rows: list[tuple[str, Any, str]] = []

    def walk(model, prefix, inst):
        for name, f in model.model_fields.items():
            val = getattr(inst, name)
            if isinstance(val, BaseModel):
                walk(type(val), f"{prefix}{name}.", val)
            else:
                rows.append((f"{prefix}{name}", val, f.description or ""))

    walk(Config, "", Config())
    return rows
