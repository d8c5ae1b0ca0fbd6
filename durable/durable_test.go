package durable

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func rec(i int) []byte {
	return []byte(fmt.Sprintf("record %06d %s", i, bytes.Repeat([]byte{'x'}, i%50)))
}

// fill appends n records, one Append per 10, and returns their ids.
func fill(t *testing.T, l *Log, from, n int) []uint64 {
	t.Helper()
	var out []uint64
	for i := from; i < from+n; i += 10 {
		k := min(10, from+n-i)
		data := make([][]byte, k)
		for j := range data {
			data[j] = rec(i + j)
		}
		ids := make([]uint64, k)
		require.NoError(t, l.Append(data, ids))
		out = append(out, ids...)
	}
	return out
}

func loadAll(t *testing.T, l *Log) (ids []uint64, data []string) {
	t.Helper()
	require.NoError(t, l.Load(func(id uint64, d []byte) error {
		ids = append(ids, id)
		data = append(data, string(d))
		return nil
	}))
	return ids, data
}

func TestRoundTripAcrossReopen(t *testing.T) {
	for _, s := range []Sync{SyncOS, SyncDisk} {
		t.Run(fmt.Sprint(s), func(t *testing.T) {
			dir := t.TempDir()
			l, err := Open(dir, WithSync(s), WithSegmentSize(4096))
			require.NoError(t, err)
			ids := fill(t, l, 0, 1000)
			for i := 1; i < len(ids); i++ {
				require.Equal(t, ids[i-1]+1, ids[i], "ids are consecutive")
			}
			// Remove the first 600 (in order) and every third after, out
			// of order: those are not loaded again.
			l.Remove(ids[:600])
			var odd []uint64
			for i := 998; i >= 600; i -= 3 {
				odd = append(odd, ids[i])
			}
			l.Remove(odd)
			l.SetAside(ids[601], rec(601))
			want := 1000 - 600 - len(odd) - 1
			assert.Equal(t, want, l.Len())
			require.NoError(t, l.Close())
			segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
			assert.Less(t, len(segs), 10, "segments with nothing left are deleted")

			l, err = Open(dir, WithSync(s), WithSegmentSize(4096))
			require.NoError(t, err)
			got, data := loadAll(t, l)
			// Out-of-order removals above the acked mark may come back
			// (at least once), but nothing kept is missing, nothing
			// acknowledged in order or set aside returns, and the order
			// holds. (Open numbers the records it keeps anew.)
			index := map[string]int{}
			for i := range 1000 {
				index[string(rec(i))] = i
			}
			kept := map[int]bool{}
			prev := -1
			for _, d := range data {
				i, ok := index[d]
				require.True(t, ok, "unknown record %q", d)
				assert.GreaterOrEqual(t, i, 600, "acknowledged in order: not sent again")
				assert.Greater(t, i, prev, "oldest first")
				kept[i], prev = true, i
			}
			removed := map[uint64]bool{ids[601]: true}
			for _, id := range odd {
				removed[id] = true
			}
			for i := 600; i < 1000; i++ {
				if !removed[ids[i]] {
					assert.True(t, kept[i], "record %d lost", i)
				}
			}
			assert.False(t, kept[601], "set aside: never loaded again")
			for i := 1; i < len(got); i++ {
				assert.Equal(t, got[i-1]+1, got[i], "consecutive ids")
			}
			more := fill(t, l, 1000, 5)
			assert.Greater(t, more[0], got[len(got)-1], "new ids follow the loaded ones")
			require.NoError(t, l.Close())
			assert.ErrorIs(t, l.Append([][]byte{[]byte("x")}, make([]uint64, 1)), ErrClosed)
		})
	}
}

func TestConcurrentAppendsShareWrites(t *testing.T) {
	l, err := Open(t.TempDir(), WithSync(SyncDisk), WithSegmentSize(1<<16))
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	all := map[uint64]string{}
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				d := fmt.Sprintf("g%d-%d", g, i)
				ids := make([]uint64, 1)
				if !assert.NoError(t, l.Append([][]byte{[]byte(d)}, ids)) {
					return
				}
				mu.Lock()
				all[ids[0]] = d
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, all, 3200, "every id distinct")
	dir := l.dir
	require.NoError(t, l.Close())
	l, err = Open(dir)
	require.NoError(t, err)
	defer l.Close()
	ids, data := loadAll(t, l)
	require.Len(t, ids, 3200)
	for i, id := range ids {
		assert.Equal(t, all[id], data[i])
	}
}

func TestMaxAge(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }
	l, err := Open(dir)
	require.NoError(t, err)
	l.cfg.now = clock
	fill(t, l, 0, 10)
	now = now.Add(time.Hour)
	fill(t, l, 10, 5)
	require.NoError(t, l.Close())
	l, err = Open(dir, WithMaxAge(30*time.Minute), func(c *config) error { c.now = clock; return nil })
	require.NoError(t, err)
	defer l.Close()
	_, data := loadAll(t, l)
	require.Len(t, data, 5)
	assert.Equal(t, string(rec(10)), data[0])
	assert.Equal(t, 10, l.Recovery().Expired)
}

// damage is one way of hurting the newest segment of a queue.
type damage struct {
	name string
	hurt func(t *testing.T, path string, size int64)
}

func truncateAt(frac float64) func(*testing.T, string, int64) {
	return func(t *testing.T, path string, size int64) {
		require.NoError(t, os.Truncate(path, int64(float64(size)*frac)))
	}
}

func overwrite(at func(size int64) int64, b func(n int) []byte) func(*testing.T, string, int64) {
	return func(t *testing.T, path string, size int64) {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		require.NoError(t, err)
		defer f.Close()
		_, err = f.WriteAt(b(4096), at(size))
		require.NoError(t, err)
	}
}

var damages = []damage{
	{"truncate 8KiB", func(t *testing.T, p string, _ int64) { require.NoError(t, os.Truncate(p, 8<<10)) }},
	{"truncate 16KiB", func(t *testing.T, p string, _ int64) { require.NoError(t, os.Truncate(p, 16<<10)) }},
	{"truncate quarter", truncateAt(0.25)},
	{"truncate half", truncateAt(0.5)},
	{"truncate three quarters", truncateAt(0.75)},
	{"truncate random", func(t *testing.T, p string, size int64) { require.NoError(t, os.Truncate(p, 9+rand.Int64N(size-9))) }},
	{"truncate inside header", func(t *testing.T, p string, _ int64) { require.NoError(t, os.Truncate(p, 3)) }},
	{"zeroed page", overwrite(func(s int64) int64 { return s / 2 &^ 4095 }, func(n int) []byte { return make([]byte, n) })},
	{"garbage page", overwrite(func(s int64) int64 { return s / 3 }, func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rand.IntN(256))
		}
		return b
	})},
	{"zeroed header", overwrite(func(int64) int64 { return 0 }, func(int) []byte { return make([]byte, 8) })},
	{"one flipped bit", overwrite(func(s int64) int64 { return s / 2 }, func(int) []byte { return []byte{0x55} })},
}

// TestDamageNeverCrashes: every kind of damage gives a typed error with
// the counts, and WithRecover salvages every readable record, with the
// lost ones counted exactly (ids are consecutive), and moves the damage
// aside.
func TestDamageNeverCrashes(t *testing.T) {
	const n = 5000
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := Open(dir)
			require.NoError(t, err)
			ids := fill(t, l, 0, n)
			require.NoError(t, l.Close())
			segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
			require.Len(t, segs, 1)
			st, err := os.Stat(segs[0])
			require.NoError(t, err)
			d.hurt(t, segs[0], st.Size())

			_, err = Open(dir)
			var de *DamageError
			require.ErrorAs(t, err, &de)
			assert.ErrorIs(t, err, ErrDamaged)
			assert.Equal(t, n, de.Salvaged+de.Lost, "every record is either readable or counted lost: %v", err)

			l, err = Open(dir, WithRecover())
			require.NoError(t, err)
			got, data := loadAll(t, l)
			rc := l.Recovery()
			assert.Equal(t, de.Salvaged, rc.Salvaged)
			assert.Equal(t, de.Lost, rc.Lost)
			assert.Equal(t, len(got), rc.Salvaged)
			assert.Equal(t, n, rc.Salvaged+rc.Lost)
			assert.DirExists(t, rc.MovedTo)
			index := map[string]int{}
			for i := range n {
				index[string(rec(i))] = i
			}
			prev := -1
			for _, d := range data {
				i, ok := index[d]
				require.True(t, ok, "salvaged records are intact: %q", d)
				require.Greater(t, i, prev, "in order")
				prev = i
			}
			_ = ids
			fill(t, l, n, 10)
			require.NoError(t, l.Close())
			l, err = Open(dir)
			require.NoError(t, err, "a recovered folder opens cleanly")
			again, _ := loadAll(t, l)
			assert.Len(t, again, len(got)+10)
			require.NoError(t, l.Close())
		})
	}
}

func TestDamagedAckedMarkSendsAgain(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir)
	require.NoError(t, err)
	ids := fill(t, l, 0, 100)
	l.Remove(ids[:50])
	require.NoError(t, l.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, ackedName), []byte("garbage!garba"), 0o600))
	l, err = Open(dir)
	require.NoError(t, err, "a damaged mark only costs duplicates")
	defer l.Close()
	got, _ := loadAll(t, l)
	assert.GreaterOrEqual(t, len(got), 50)
}

func TestUnusableFolders(t *testing.T) {
	t.Run("missing folder is created", func(t *testing.T) {
		l, err := Open(filepath.Join(t.TempDir(), "a", "b"))
		require.NoError(t, err)
		require.NoError(t, l.Close())
	})
	t.Run("a file where the folder should be", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(p, nil, 0o600))
		_, err := Open(p)
		require.Error(t, err)
	})
	t.Run("read-only segment", func(t *testing.T) {
		dir := t.TempDir()
		l, err := Open(dir)
		require.NoError(t, err)
		fill(t, l, 0, 10)
		require.NoError(t, l.Close())
		segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
		require.NoError(t, os.Chmod(dir, 0o500))
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		_ = segs
		_, err = Open(dir)
		if os.Geteuid() == 0 {
			// root writes anyway: the open must simply work.
			assert.NoError(t, err)
		} else {
			assert.Error(t, err)
		}
	})
}

// TestDiskFull writes into a tiny tmpfs: Append fails with ENOSPC, as an
// error, and what was accepted before is still there. With segments
// larger than the disk no segment can be reserved and the log writes
// with write(2) from the start; with small ones it maps segments until
// the reservation of the next one fails.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	for _, seg := range []int64{1 << 20, 1 << 15} {
		t.Run(fmt.Sprintf("segments of %d", seg), func(t *testing.T) {
			dir := t.TempDir()
			if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
				t.Skipf("cannot mount a tmpfs here: %v", err)
			}
			t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
			l, err := Open(dir, WithSegmentSize(seg))
			require.NoError(t, err)
			assert.Equal(t, seg < 256<<10, l.mem != nil, "mapped only when the segment fits")
			accepted := 0
			var werr error
			for i := 0; i < 100000 && werr == nil; i++ {
				werr = l.Append([][]byte{bytes.Repeat([]byte{'z'}, 1000)}, make([]uint64, 1))
				if werr == nil {
					accepted++
				}
			}
			require.Error(t, werr)
			assert.True(t, errors.Is(werr, syscall.ENOSPC), "%v", werr)
			_ = l.Close()
			l, err = Open(dir, WithRecover())
			if err != nil {
				// No room to rewrite the segment: a plain error, no crash.
				assert.True(t, errors.Is(err, syscall.ENOSPC), "%v", err)
				return
			}
			defer l.Close()
			got, _ := loadAll(t, l)
			assert.GreaterOrEqual(t, len(got), accepted-1, "what was accepted survives (the failed write may have left a torn frame)")
		})
	}
}

func FuzzScan(f *testing.F) {
	good := []byte(magic)
	for i := range 5 {
		good = appendFrame(good, uint64(i+1), int64(i), rec(i))
	}
	f.Add(good)
	f.Add(append(append([]byte{}, good...), make([]byte, 100)...))
	torn := append(append([]byte{}, good...), make([]byte, 100)...)
	putFrame(torn[len(good):], 6, 6, rec(6))
	torn[len(good)] = 0 // its length word never written
	f.Add(torn)
	f.Add(good[:len(good)/2])
	f.Add([]byte(magic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := scan(b)
		for _, e := range r.entries {
			if len(e.data) < 8 {
				t.Fatalf("entry without its time")
			}
		}
		if !r.damaged && len(b) > headerLen && len(r.entries) == 0 && !zeroWord(b[headerLen:]) {
			t.Fatalf("bytes after the header but no entry, no end word and no damage")
		}
		for i := 1; i < len(r.entries); i++ {
			prev, cur := r.entries[i-1].data, r.entries[i].data
			if &prev[0] == &cur[0] {
				t.Fatalf("one frame read twice")
			}
		}
	})
}

// TestMappedSegmentAfterKill reads a folder as a killed process leaves
// it under SyncOS: the newest segment at its reserved size, zeros after
// the last frame, and maybe a frame half copied (no length word yet).
// Everything Append accepted is there, and none of it is damage.
func TestMappedSegmentAfterKill(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, WithSegmentSize(1<<16))
	require.NoError(t, err)
	if l.mem == nil {
		t.Skip("segments are not mapped on this system")
	}
	const n = 2000 // several segments
	fill(t, l, 0, n)
	l.mu.Lock()
	used := l.size
	l.mu.Unlock()
	// What a kill leaves: the files as they are now, open.
	crashed := t.TempDir()
	names, err := os.ReadDir(dir)
	require.NoError(t, err)
	var newest string
	for _, e := range names {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(crashed, e.Name()), b, 0o600))
		if e.Name() > newest && e.Name() != ackedName && e.Name() != asideName {
			newest = e.Name()
		}
	}
	require.NoError(t, l.Close())
	seg := filepath.Join(crashed, newest)
	st, err := os.Stat(seg)
	require.NoError(t, err)
	require.Equal(t, int64(1<<16), st.Size(), "the newest segment is reserved ahead")
	for _, torn := range []bool{false, true} {
		if torn {
			b, err := os.ReadFile(seg)
			require.NoError(t, err)
			putFrame(b[used:], n+1, 1, rec(n))
			b[used], b[used+1], b[used+2], b[used+3] = 0, 0, 0, 0
			require.NoError(t, os.WriteFile(seg, b, 0o600))
		}
		c := t.TempDir()
		require.NoError(t, os.CopyFS(c, os.DirFS(crashed)))
		l, err := Open(c)
		require.NoError(t, err, "torn %v", torn)
		_, data := loadAll(t, l)
		require.Len(t, data, n)
		for i, d := range data {
			require.Equal(t, string(rec(i)), d)
		}
		require.NoError(t, l.Close())
	}
}

// TestMappedFileTruncatedUnderUs: a mapped segment cut by someone else
// makes Append fail with an error, never a crash.
func TestMappedFileTruncatedUnderUs(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir)
	require.NoError(t, err)
	if l.mem == nil {
		t.Skip("segments are not mapped on this system")
	}
	fill(t, l, 0, 10)
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	require.Len(t, segs, 1)
	require.NoError(t, os.Truncate(segs[0], 0))
	err = l.Append([][]byte{[]byte("after the cut")}, make([]uint64, 1))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "durable: write")
	err = l.Append([][]byte{[]byte("and after")}, make([]uint64, 1))
	require.Error(t, err, "the log stays failed")
	_ = l.Close()
}
