/* mvtrace: memvirt's Valgrind capture tool.

   Records every instruction fetch, load, store and modify of the client, like Lackey's
   --trace-mem=yes, but writes them as a compact binary stream (one file per process image)
   in the format described by docs/mvtrace-format.md, optionally collapsed into per-page runs
   (a collapsed data record also says which 64-byte lines of its page its accesses touched).

   Instrumentation follows Lackey's rules exactly, so that the raw counts (and, with
   --collapse=none, the records themselves) are the same as Lackey's: one fetch per IMark,
   a load for every Load / LoadG / LLSC-load / dirty read / CAS, a store for every Store /
   StoreG / SC / dirty write / CAS, and a load immediately followed (in the event queue) by an
   unguarded store of the same address expression and size becomes one modify.

   Options: --out-dir=DIR (required), --collapse=none|page (page), --sync=G (8192),
            --buffer-mb=N (4). */

#include "pub_tool_basics.h"
#include "pub_tool_tooliface.h"
#include "pub_tool_libcassert.h"
#include "pub_tool_libcbase.h"
#include "pub_tool_libcfile.h"
#include "pub_tool_libcprint.h"
#include "pub_tool_libcproc.h"
#include "pub_tool_mallocfree.h"
#include "pub_tool_machine.h"
#include "pub_tool_options.h"
#include "pub_tool_aspacemgr.h"
#include "pub_tool_vki.h"
#include "pub_tool_vkiscnums.h"

/* Not in the tool headers, but exported by libcoregrind: moves an fd above the client's
   fd limit and sets close-on-exec, so that the client can neither see nor close it (Python's
   subprocess closes every fd it does not know about) and an exec'd image does not inherit
   it. Valgrind opens its own log file this way. */
extern Int VG_(safe_fd)(Int oldfd);

#define FORMAT_VERSION 2
#define HEADER_SIZE 64

enum { K_FETCH = 0, K_LOAD = 1, K_STORE = 2, K_MODIFY = 3 };
enum {
   T_SYSCALL = 0x40, T_SYSCALL_PRE = 0x41, T_THREAD = 0x42, T_MAP = 0x43,
   T_EXEC_PATH = 0x44, T_SIGNAL = 0x45, T_END = 0x46
};

#define PAGE_SHIFT 12
#define PAGE_MASK 0xFFFUL
#define LINE_SHIFT 6           /* 64-byte lines: bit (addr >> 6) & 63 of a lines bitmap */
#define NO_RUN (~0UL)          /* a page key no access can have: no open run */
#define MAX_REC_BYTES 32       /* tag + 10 (address) + 5 (size) + 5 (repeat) + 10 (lines) */
#define TAG_REPEAT 0x10
#define TAG_SAME_SIZE 0x20
#define TAG_LINES 0x40
#define MAX_EVENT_BYTES 512    /* the largest event is EXEC_PATH: 1 + 2 + 255 */
#define MAX_PATH_BYTES 255

/* ------------------------------------------------------------------------------------------
   Options */

static const HChar* clo_out_dir = NULL;
static Int clo_collapse = 1;        /* 0 none, 1 page */
static Long clo_sync = 8192;
static Long clo_buffer_mb = 4;

/* ------------------------------------------------------------------------------------------
   Per-image state */

/* A staged access record: repeat counts are bumped (and line bits of the data run set) in
   place while its run is open. */
typedef struct {
   Addr  addr;
   ULong lines;   /* data records: the lines of the page the folded accesses (the 2nd,
                     3rd... of the run) touched */
   UInt  size;
   UInt  rep;
   UInt  kind;
} Rec;

static Bool   tracing = False;    /* False after an error: the client runs on, untraced */
static Int    out_fd = -1;
static HChar* out_path = NULL;
static UChar* obuf;               /* encoded bytes waiting for write() */
static SizeT  obuf_len, obuf_cap;
static Rec*   stage;              /* records of the open runs and those after them */
static UInt   n_staged, stage_cap;
static UWord  fetch_key = NO_RUN; /* page of the open fetch run */
static UWord  data_key = NO_RUN;  /* page << 2 | kind of the open data run */
static Rec*   fetch_rec;
static Rec*   data_rec;
static Addr   prev_addr[2];       /* per stream (fetch, data), for the address deltas */
static UInt   prev_size[2];
static ULong  n_instr;            /* instructions of this image = index of the next one */
static ULong  next_sync;          /* index of the next sync point */
static ULong  n_data[4];          /* loads, stores, modifies at 1..3 */
static ULong  n_records;          /* access records written */
static ThreadId cur_tid;          /* 0: none written yet in this stream */
static Bool   maps_done = False;  /* MAP records: once per Valgrind process (a forked child
                                     inherits True and writes none; an exec starts anew) */
static Bool   exited;             /* exit_group entered, or exit by the last thread */
static UInt   exit_code;          /* its status (Valgrind 3.19 passes 0 to fini) */
static UInt   n_threads;          /* live threads, to tell the last thread's exit */

/* ------------------------------------------------------------------------------------------
   Output */

static const HChar* error_text(Int err)
{
   switch (err) {
   case VKI_ENOSPC: return "no space left on device";
   case VKI_EFBIG:  return "file too large";
   case VKI_ENOENT: return "no such file or directory";
   case VKI_EACCES: return "permission denied";
   case VKI_EROFS:  return "read-only file system";
   case VKI_EIO:    return "input/output error";
   default:         return "error";
   }
}

/* One clear line on stderr; the client runs on, untraced (its stream has no END). */
static void stop_tracing(const HChar* what, Int err)
{
   if (!tracing)
      return;
   VG_(umsg)("mvtrace: %s %s: %s (errno %d); tracing stopped\n", what,
             out_path ? out_path : "", error_text(err), err);
   tracing = False;
   if (out_fd >= 0)
      VG_(close)(out_fd);
   out_fd = -1;
   obuf_len = 0;
}

static void write_out(void)
{
   SizeT done = 0;
   if (!tracing) {
      obuf_len = 0;
      return;
   }
   while (done < obuf_len) {
      Int n = VG_(write)(out_fd, obuf + done, (Int)(obuf_len - done));
      if (n <= 0) {
         stop_tracing("cannot write", n < 0 ? -n : VKI_ENOSPC);
         return;
      }
      done += n;
   }
   obuf_len = 0;
}

static inline UChar* put_uv(UChar* p, ULong v)
{
   while (v >= 0x80) {
      *p++ = (UChar)(v | 0x80);
      v >>= 7;
   }
   *p++ = (UChar)v;
   return p;
}

static inline UChar* put_sv(UChar* p, Long v)
{
   return put_uv(p, ((ULong)v << 1) ^ (ULong)(v >> 63));
}

/* The 64-byte lines of its 4 KiB page that an access touches, as a bitmap (bit i = line i);
   for an access that crosses into the next page, those of its first page. */
static inline ULong line_bits(Addr a, UWord size)
{
   UWord off = a & PAGE_MASK;
   UWord end = off + (size ? size - 1 : 0);
   UWord first = off >> LINE_SHIFT;
   UWord last = (end > PAGE_MASK ? PAGE_MASK : end) >> LINE_SHIFT;
   return (((ULong)2 << (last - first)) - 1) << first;   /* lines first..last */
}

/* The value of a record's lines field (docs/mvtrace-format.md): the lines of the page that
   the first access (lines f..l, bitmap `first`) did not touch, in order of distance from
   it, l+1, f-1, l+2, f-2, ... (skipping lines beyond the page): bit k = the k-th of them. */
static ULong lines_field(ULong lines, ULong first)
{
   ULong other = lines & ~first, v = 0;
   UWord f = (UWord)__builtin_ctzll(first), l = 63 - (UWord)__builtin_clzll(first);
   UWord above = 63 - l, below = f;   /* lines of the page above l and below f */
   while (other) {
      UWord c = (UWord)__builtin_ctzll(other);
      UWord d = c > l ? c - l : f - c;   /* distance from the first access's lines */
      UWord k = VG_MIN(d - 1, above) + VG_MIN(d - 1, below);   /* lines nearer than d */
      if (c < f && d <= above)
         k++;   /* line l+d comes first */
      v |= (ULong)1 << k;
      other &= other - 1;
   }
   return v;
}

/* Encode every staged record and close both runs. Called at sync points, before events and
   when the staging area is full: the only moments when no record is still growing. */
static void close_runs(void)
{
   UInt i;
   UChar* p;
   fetch_key = data_key = NO_RUN;
   if (n_staged == 0)
      return;
   if (obuf_len + (SizeT)n_staged * MAX_REC_BYTES > obuf_cap)
      write_out();
   p = obuf + obuf_len;
   for (i = 0; i < n_staged; i++) {
      const Rec* r = &stage[i];
      Int s = r->kind != K_FETCH;
      UChar tag = (UChar)r->kind;
      UChar* t = p++;
      p = put_sv(p, (Long)(r->addr - prev_addr[s]));
      if (r->size == prev_size[s])
         tag |= TAG_SAME_SIZE;
      else
         p = put_uv(p, r->size);
      if (r->rep != 1) {
         tag |= TAG_REPEAT;
         p = put_uv(p, r->rep);
         /* the lines field, only when the folded accesses touched a line that the first
            did not */
         if (s && r->lines) {
            ULong first = line_bits(r->addr, r->size);
            if (r->lines & ~first) {
               tag |= TAG_LINES;
               p = put_uv(p, lines_field(r->lines, first));
            }
         }
      }
      *t = tag;
      prev_addr[s] = r->addr;
      prev_size[s] = r->size;
   }
   n_records += n_staged;
   n_staged = 0;
   obuf_len = tracing ? (SizeT)(p - obuf) : 0;
}

/* Start an event record: closes the runs and returns where to write it. */
static UChar* event_start(UChar tag)
{
   close_runs();
   if (obuf_len + MAX_EVENT_BYTES > obuf_cap)
      write_out();
   obuf[obuf_len] = tag;
   return obuf + obuf_len + 1;
}

static void event_end(UChar* p)
{
   obuf_len = tracing ? (SizeT)(p - obuf) : 0;
}

/* ------------------------------------------------------------------------------------------
   Analysis helpers, called from the instrumented code */

static inline Rec* new_rec(UInt kind, Addr a, UWord size)
{
   Rec* r;
   if (n_staged == stage_cap)
      close_runs();
   r = &stage[n_staged++];
   r->addr = a;
   r->lines = 0;
   r->size = (UInt)size;
   r->rep = 1;
   r->kind = kind;
   return r;
}

static VG_REGPARM(2) void on_fetch(Addr a, UWord size)
{
   if (UNLIKELY(n_instr == next_sync)) {
      /* sync point: just before the fetch of instruction G, 2G, ... */
      close_runs();
      next_sync += (ULong)clo_sync;
   }
   n_instr++;
   if ((a >> PAGE_SHIFT) == fetch_key && (a & PAGE_MASK) + size <= 4096) {
      fetch_rec->rep++;   /* cannot overflow: runs are closed every G < 2^32 instructions */
      return;
   }
   fetch_rec = new_rec(K_FETCH, a, size);
   /* a record that crosses a page takes no more accesses */
   fetch_key = clo_collapse && (a & PAGE_MASK) + size <= 4096 ? a >> PAGE_SHIFT : NO_RUN;
}

static VG_REGPARM(2) void on_data(Addr a, UWord kind_size)
{
   UWord kind = kind_size & 3, size = kind_size >> 2;
   UWord key = (a >> PAGE_SHIFT) << 2 | kind;
   n_data[kind]++;
   if (key == data_key && (a & PAGE_MASK) + size <= 4096 && data_rec->rep != 0xFFFFFFFFU) {
      data_rec->rep++;
      data_rec->lines |= line_bits(a, size);   /* the sets of lines, not their order */
      return;
   }
   data_rec = new_rec(kind, a, size);
   data_key = clo_collapse && (a & PAGE_MASK) + size <= 4096 ? key : NO_RUN;
}

/* ------------------------------------------------------------------------------------------
   Instrumentation: Lackey's event queue */

typedef enum { Ev_Ir, Ev_Dr, Ev_Dw, Ev_Dm } EvKind;

typedef struct {
   EvKind  kind;
   IRExpr* addr;
   Int     size;
   IRExpr* guard;   /* NULL: unconditional */
} Event;

/* Lackey queues up to 4 events and emits them lazily; a store merges into a modify only
   with the event just before it, so the queue's flush points decide what merges. We keep the
   same queue length and flush points. */
#define N_EVENTS 4
static Event events[N_EVENTS];
static Int   n_events = 0;

static void flush_events(IRSB* sb)
{
   Int i;
   for (i = 0; i < n_events; i++) {
      Event*   ev = &events[i];
      IRDirty* di;
      if (ev->kind == Ev_Ir) {
         di = unsafeIRDirty_0_N(2, "mvtrace_fetch", VG_(fnptr_to_fnentry)(on_fetch),
                                mkIRExprVec_2(ev->addr, mkIRExpr_HWord(ev->size)));
      } else {
         UWord kind = ev->kind == Ev_Dr ? K_LOAD : ev->kind == Ev_Dw ? K_STORE : K_MODIFY;
         di = unsafeIRDirty_0_N(2, "mvtrace_data", VG_(fnptr_to_fnentry)(on_data),
                                mkIRExprVec_2(ev->addr,
                                              mkIRExpr_HWord((UWord)ev->size << 2 | kind)));
      }
      if (ev->guard)
         di->guard = ev->guard;
      addStmtToIRSB(sb, IRStmt_Dirty(di));
   }
   n_events = 0;
}

static void add_event(IRSB* sb, EvKind kind, IRExpr* addr, Int size, IRExpr* guard)
{
   tl_assert(isIRAtom(addr));
   if (kind == Ev_Dw && guard == NULL && n_events > 0) {
      Event* last = &events[n_events - 1];
      if (last->kind == Ev_Dr && last->guard == NULL && last->size == size
          && eqIRAtom(last->addr, addr)) {
         last->kind = Ev_Dm;
         return;
      }
   }
   if (n_events == N_EVENTS)
      flush_events(sb);
   events[n_events].kind = kind;
   events[n_events].addr = addr;
   events[n_events].size = size;
   events[n_events].guard = guard;
   n_events++;
}

static IRSB* mv_instrument(VgCallbackClosure* closure, IRSB* sbIn,
                           const VexGuestLayout* layout, const VexGuestExtents* vge,
                           const VexArchInfo* archinfo_host, IRType gWordTy, IRType hWordTy)
{
   IRTypeEnv* tyenv = sbIn->tyenv;
   IRSB* sbOut;
   Int i = 0;

   if (gWordTy != hWordTy)
      VG_(tool_panic)("mvtrace: host/guest word size mismatch");
   sbOut = deepCopyIRSBExceptStmts(sbIn);
   /* statements before the first IMark belong to no instruction */
   while (i < sbIn->stmts_used && sbIn->stmts[i]->tag != Ist_IMark)
      addStmtToIRSB(sbOut, sbIn->stmts[i++]);

   n_events = 0;
   for (; i < sbIn->stmts_used; i++) {
      IRStmt* st = sbIn->stmts[i];
      if (!st || st->tag == Ist_NoOp)
         continue;
      switch (st->tag) {
      case Ist_IMark:
         add_event(sbOut, Ev_Ir, mkIRExpr_HWord((HWord)st->Ist.IMark.addr),
                   st->Ist.IMark.len, NULL);
         break;
      case Ist_WrTmp: {
         IRExpr* e = st->Ist.WrTmp.data;
         if (e->tag == Iex_Load)
            add_event(sbOut, Ev_Dr, e->Iex.Load.addr, sizeofIRType(e->Iex.Load.ty), NULL);
         break;
      }
      case Ist_Store:
         add_event(sbOut, Ev_Dw, st->Ist.Store.addr,
                   sizeofIRType(typeOfIRExpr(tyenv, st->Ist.Store.data)), NULL);
         break;
      case Ist_StoreG: {
         IRStoreG* sg = st->Ist.StoreG.details;
         add_event(sbOut, Ev_Dw, sg->addr, sizeofIRType(typeOfIRExpr(tyenv, sg->data)),
                   sg->guard);
         break;
      }
      case Ist_LoadG: {
         IRLoadG* lg = st->Ist.LoadG.details;
         IRType ty = Ity_INVALID, wide = Ity_INVALID;
         typeOfIRLoadGOp(lg->cvt, &wide, &ty);
         add_event(sbOut, Ev_Dr, lg->addr, sizeofIRType(ty), lg->guard);
         break;
      }
      case Ist_Dirty: {
         IRDirty* d = st->Ist.Dirty.details;
         if (d->mFx == Ifx_Read || d->mFx == Ifx_Modify)
            add_event(sbOut, Ev_Dr, d->mAddr, d->mSize, NULL);
         if (d->mFx == Ifx_Write || d->mFx == Ifx_Modify)
            add_event(sbOut, Ev_Dw, d->mAddr, d->mSize, NULL);
         break;
      }
      case Ist_CAS: {
         IRCAS* cas = st->Ist.CAS.details;
         Int size = sizeofIRType(typeOfIRExpr(tyenv, cas->dataLo));
         if (cas->dataHi != NULL)
            size *= 2;   /* a double-width CAS */
         add_event(sbOut, Ev_Dr, cas->addr, size, NULL);
         add_event(sbOut, Ev_Dw, cas->addr, size, NULL);
         break;
      }
      case Ist_LLSC: {
         IRType ty;
         if (st->Ist.LLSC.storedata == NULL) {
            ty = typeOfIRTemp(tyenv, st->Ist.LLSC.result);
            add_event(sbOut, Ev_Dr, st->Ist.LLSC.addr, sizeofIRType(ty), NULL);
         } else {
            ty = typeOfIRExpr(tyenv, st->Ist.LLSC.storedata);
            add_event(sbOut, Ev_Dw, st->Ist.LLSC.addr, sizeofIRType(ty), NULL);
         }
         break;
      }
      case Ist_Exit:
         /* the events so far must be emitted before a side exit can leave the block */
         flush_events(sbOut);
         break;
      default:
         break;
      }
      addStmtToIRSB(sbOut, st);
   }
   flush_events(sbOut);
   return sbOut;
}

/* ------------------------------------------------------------------------------------------
   Process images: files, header, MAP records */

static void put_u32(UChar* p, UInt v)
{
   p[0] = (UChar)v; p[1] = (UChar)(v >> 8); p[2] = (UChar)(v >> 16); p[3] = (UChar)(v >> 24);
}

static UInt read_u32(const UChar* p)
{
   return (UInt)p[0] | (UInt)p[1] << 8 | (UInt)p[2] << 16 | (UInt)p[3] << 24;
}

/* The parent pid in the header of an existing stream file, or -1. */
static Int header_ppid(const HChar* path)
{
   UChar h[HEADER_SIZE];
   Int n = -1;
   SysRes r = VG_(open)(path, VKI_O_RDONLY, 0);
   if (sr_isError(r))
      return -1;
   n = VG_(read)((Int)sr_Res(r), h, HEADER_SIZE);
   VG_(close)((Int)sr_Res(r));
   if (n != HEADER_SIZE || VG_(memcmp)(h, "MVTRACE", 8) != 0)
      return -1;
   return (Int)read_u32(h + 20);
}

/* Reset the per-image state and create DIR/mvtrace.PID.SEQ (lowest free SEQ). */
static void open_image(void)
{
   Int pid = VG_(getpid)(), ppid = VG_(getppid)();
   UInt seq, flags = 0;
   SysRes r;
   UChar* h;
   SizeT plen = VG_(strlen)(clo_out_dir) + 64;

   n_staged = 0;
   fetch_key = data_key = NO_RUN;
   prev_addr[0] = prev_addr[1] = 0;
   prev_size[0] = prev_size[1] = 0;
   n_instr = 0;
   next_sync = (ULong)clo_sync;
   n_data[0] = n_data[1] = n_data[2] = n_data[3] = 0;
   n_records = 0;
   cur_tid = 0;
   exited = False;
   exit_code = 0;
   n_threads = 1;
   obuf_len = 0;

   if (out_path == NULL)
      out_path = VG_(malloc)("mvtrace.path", plen);
   for (seq = 0;; seq++) {
      VG_(snprintf)(out_path, plen, "%s/mvtrace.%d.%u", clo_out_dir, pid, seq);
      r = VG_(open)(out_path, VKI_O_WRONLY | VKI_O_CREAT | VKI_O_EXCL, 0644);
      if (!sr_isError(r) || sr_Err(r) != VKI_EEXIST)
         break;
   }
   tracing = True;
   if (sr_isError(r)) {
      stop_tracing("cannot create", (Int)sr_Err(r));
      return;
   }
   out_fd = VG_(safe_fd)((Int)sr_Res(r));
   if (out_fd < 0) {
      stop_tracing("cannot keep open", VKI_EMFILE);
      return;
   }
   if (seq > 0) {
      /* An exec'd image keeps the pid and the parent of the image before it (a reused pid
         almost never has the same parent as well). */
      HChar* prev = VG_(malloc)("mvtrace.prev", plen);
      VG_(snprintf)(prev, plen, "%s/mvtrace.%d.%u", clo_out_dir, pid, seq - 1);
      if (header_ppid(prev) == ppid)
         flags |= 1;
      VG_(free)(prev);
   }
   h = obuf;
   VG_(memset)(h, 0, HEADER_SIZE);
   VG_(memcpy)(h, "MVTRACE", 8);
   put_u32(h + 8, FORMAT_VERSION);
   put_u32(h + 12, HEADER_SIZE);
   put_u32(h + 16, (UInt)pid);
   put_u32(h + 20, (UInt)ppid);
   put_u32(h + 24, seq);
   put_u32(h + 28, (UInt)clo_collapse);
   put_u32(h + 32, (UInt)clo_sync);
   put_u32(h + 36, flags);
   obuf_len = HEADER_SIZE;
   /* the header goes out at once, so that a reader sees the file's identity early */
   write_out();
}

/* MAP records: the client address space Valgrind's loader set up before the first
   instruction (executable, interpreter, stack, vdso...). */
static void write_maps(void)
{
   Addr sp = VG_(get_SP)(1);
   Int cap = 64, n, i;
   Addr* starts;
   for (;;) {   /* returns minus the number needed when the array is too small */
      starts = VG_(malloc)("mvtrace.segs", cap * sizeof(Addr));
      n = VG_(am_get_segment_starts)(SkFileC | SkAnonC | SkShmC, starts, cap);
      if (n >= 0)
         break;
      VG_(free)(starts);
      cap = -n;
   }
   for (i = 0; i < n; i++) {
      NSegment const* seg = VG_(am_find_nsegment)(starts[i]);
      UChar* p;
      UWord kind, prot;
      if (seg == NULL)
         continue;
      prot = (seg->hasR ? 1 : 0) | (seg->hasW ? 2 : 0) | (seg->hasX ? 4 : 0);
      kind = seg->kind == SkFileC ? 1
           : seg->kind == SkAnonC && !(seg->start <= sp && sp <= seg->end) ? 0 : 2;
      p = event_start(T_MAP);
      p = put_uv(p, seg->start);
      p = put_uv(p, seg->end - seg->start + 1);
      p = put_uv(p, prot);
      p = put_uv(p, kind);
      event_end(p);
   }
   VG_(free)(starts);
}

/* ------------------------------------------------------------------------------------------
   Events from the core */

static void on_start_client_code(ThreadId tid, ULong blocks_done)
{
   UChar* p;
   if (!maps_done) {
      maps_done = True;
      write_maps();
   }
   if (tid == cur_tid)
      return;
   cur_tid = tid;
   p = event_start(T_THREAD);
   p = put_uv(p, tid);
   event_end(p);
}

/* The real arity of the system calls we record (Valgrind always passes 8 arguments);
   -1: not recorded. PRE: also recorded on entry; PRE_ONLY: never on return. */
#define PRE 0x100
#define PRE_ONLY 0x200
static Int syscall_info(UInt sysno)
{
   switch (sysno) {
   case __NR_mmap:       return 6;
   case __NR_mprotect:   return 3;
   case __NR_munmap:     return 2;
   case __NR_brk:        return 1;
   case __NR_mremap:     return 5;
   case __NR_clone:      return 5;
   case __NR_fork:       return 0;
   case __NR_vfork:      return 0;
   case __NR_execve:     return 3 | PRE;      /* returns only on failure */
   case __NR_exit:       return 1 | PRE_ONLY;
   case __NR_wait4:      return 4 | PRE;
   case __NR_waitid:     return 5 | PRE;
   case __NR_exit_group: return 1 | PRE_ONLY;
   case __NR_execveat:   return 5 | PRE;
   case 435 /* clone3 */: return 2;
   default:              return -1;
   }
}

static void write_syscall(UChar tag, UInt sysno, const UWord* args, Int nargs, Bool with_res,
                          Long res)
{
   Int i;
   UChar* p = event_start(tag);
   p = put_uv(p, sysno);
   p = put_uv(p, (ULong)nargs);
   for (i = 0; i < nargs; i++)
      p = put_sv(p, (Long)args[i]);
   if (with_res)
      p = put_sv(p, res);
   event_end(p);
}

/* The path given to execve: at most 255 bytes of client memory, read only where the
   client could read it itself. */
static void write_exec_path(Addr a)
{
   HChar path[MAX_PATH_BYTES];
   Int n = 0;
   UChar* p;
   while (n < MAX_PATH_BYTES) {
      if ((n == 0 || ((a + n) & PAGE_MASK) == 0)
          && !VG_(am_is_valid_for_client)(a + n, 1, VKI_PROT_READ))
         break;
      if (((const HChar*)a)[n] == 0)
         break;
      path[n] = ((const HChar*)a)[n];
      n++;
   }
   p = event_start(T_EXEC_PATH);
   p = put_uv(p, (ULong)n);
   VG_(memcpy)(p, path, n);
   event_end(p + n);
}

static void pre_syscall(ThreadId tid, UInt sysno, UWord* args, UInt nArgs)
{
   Int info = syscall_info(sysno);
   if (info < 0 || !(info & (PRE | PRE_ONLY)))
      return;
   if (sysno == __NR_execve || sysno == __NR_execveat)
      write_exec_path(sysno == __NR_execve ? args[0] : args[1]);
   write_syscall(T_SYSCALL_PRE, sysno, args, info & 0xFF, False, 0);
   if (sysno == __NR_exit_group || (sysno == __NR_exit && --n_threads == 0)) {
      exited = True;
      exit_code = (UInt)args[0] & 0xFF;
   }
   if (sysno == __NR_execve || sysno == __NR_execveat)
      write_out();   /* a successful exec never returns */
}

static void post_syscall(ThreadId tid, UInt sysno, UWord* args, UInt nArgs, SysRes res)
{
   Int info = syscall_info(sysno);
   if (info < 0 || (info & PRE_ONLY))
      return;
   write_syscall(T_SYSCALL, sysno, args, info & 0xFF, True,
                 sr_isError(res) ? -(Long)sr_Err(res) : (Long)sr_Res(res));
}

/* fork: the parent writes out everything first, so that the child inherits no unwritten
   data; the child then starts its own stream. */
static void pre_fork(ThreadId tid)
{
   close_runs();
   write_out();
}

static void fork_child(ThreadId tid)
{
   if (out_fd >= 0)
      VG_(close)(out_fd);
   out_fd = -1;
   if (clo_out_dir != NULL && tracing)
      open_image();
}

/* ------------------------------------------------------------------------------------------
   Start-up and shut-down */

static Bool process_option(const HChar* arg)
{
   const HChar* s;
   if VG_STR_CLO(arg, "--out-dir", clo_out_dir) {
   } else if VG_STR_CLO(arg, "--collapse", s) {
      if (VG_(strcmp)(s, "none") == 0)
         clo_collapse = 0;
      else if (VG_(strcmp)(s, "page") == 0)
         clo_collapse = 1;
      else
         VG_(fmsg_bad_option)(arg, "--collapse must be none or page\n");
   } else if VG_BINT_CLO(arg, "--sync", clo_sync, 1, 0xFFFFFFFFLL) {
   } else if VG_BINT_CLO(arg, "--buffer-mb", clo_buffer_mb, 1, 1024) {
   } else
      return False;
   return True;
}

static void print_usage(void)
{
   VG_(printf)(
      "    --out-dir=DIR            write DIR/mvtrace.PID.SEQ streams (required)\n"
      "    --collapse=none|page     fold same-page accesses into runs [page]\n"
      "    --sync=G                 close all runs every G instructions [8192]\n"
      "    --buffer-mb=N            output buffer in MiB [4]\n");
}

static void print_debug_usage(void)
{
   VG_(printf)("    (none)\n");
}

static void mv_post_clo_init(void)
{
   if (clo_out_dir == NULL || clo_out_dir[0] == 0) {
      /* (VG_(fmsg_bad_option) only exits while options are being parsed) */
      VG_(fmsg)("mvtrace needs --out-dir=DIR\n");
      VG_(exit)(1);
   }
   if (clo_out_dir[0] != '/') {
      /* children may chdir: make the folder absolute once */
      const HChar* wd = VG_(get_startup_wd)();
      SizeT n = VG_(strlen)(wd) + VG_(strlen)(clo_out_dir) + 2;
      HChar* abs = VG_(malloc)("mvtrace.dir", n);
      VG_(snprintf)(abs, n, "%s/%s", wd, clo_out_dir);
      clo_out_dir = abs;
   }
   obuf_cap = (SizeT)clo_buffer_mb << 20;
   obuf = VG_(malloc)("mvtrace.obuf", obuf_cap);
   /* staging: enough for many sync intervals of ordinary code, and its encoding must fit
      in half the output buffer */
   {
      ULong cap = (ULong)clo_sync * 16;
      ULong fit = (obuf_cap / 2) / MAX_REC_BYTES;
      stage_cap = (UInt)(cap < fit ? cap : fit);
      if (stage_cap < 64)
         stage_cap = 64;
   }
   stage = VG_(malloc)("mvtrace.stage", (SizeT)stage_cap * sizeof(Rec));
   VG_(atfork)(pre_fork, NULL, fork_child);
   open_image();
}

static void on_thread_create(ThreadId parent, ThreadId child)
{
   n_threads++;
}

static void mv_fini(Int exitcode_unused)
{
   UChar* p;
   if (!exited) {
      /* The process ends neither by exit_group nor by its last thread's exit: a fatal
         signal (Valgrind runs fini before it re-raises the signal). The core does not tell
         tools which signal: 0 says "unknown". */
      p = event_start(T_SIGNAL);
      p = put_uv(p, 0);
      event_end(p);
   }
   p = event_start(T_END);
   p = put_uv(p, exit_code);
   p = put_uv(p, n_instr);
   p = put_uv(p, n_data[K_LOAD]);
   p = put_uv(p, n_data[K_STORE]);
   p = put_uv(p, n_data[K_MODIFY]);
   p = put_uv(p, n_records);
   event_end(p);
   write_out();
   if (out_fd >= 0)
      VG_(close)(out_fd);
   out_fd = -1;
}

static void mv_pre_clo_init(void)
{
   VG_(details_name)("mvtrace");
   VG_(details_version)("2");
   VG_(details_description)("memvirt's memory access capture");
   VG_(details_copyright_author)("memvirt authors");
   VG_(details_bug_reports_to)("memvirt");
   VG_(details_avg_translation_sizeB)(200);

   VG_(basic_tool_funcs)(mv_post_clo_init, mv_instrument, mv_fini);
   VG_(needs_command_line_options)(process_option, print_usage, print_debug_usage);
   VG_(needs_syscall_wrapper)(pre_syscall, post_syscall);
   VG_(track_start_client_code)(on_start_client_code);
   VG_(track_pre_thread_ll_create)(on_thread_create);
}

VG_DETERMINE_INTERFACE_VERSION(mv_pre_clo_init)
