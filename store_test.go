package tbgateway_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/durable"
	"github.com/thingsgate/tbgateway/tbtest"
)

// The queue on disk (WithQueueStore, package durable): it survives the
// process being killed, and what a repaired store salvaged is counted and
// sent.

// The durable test runs the publisher in a child process (this test binary)
// so that it can be killed with SIGKILL mid-stream.
const (
	envChild = "TBGATEWAY_DURABLE_CHILD"
	envURL   = "TBGATEWAY_DURABLE_URL"
	envDB    = "TBGATEWAY_DURABLE_DB"
	envStart = "TBGATEWAY_DURABLE_START" // the first batch number, for a child that follows another
)

// TestDurableChild is the child's body; it does nothing in a normal run.
func TestDurableChild(t *testing.T) {
	if os.Getenv(envChild) == "" {
		return
	}
	q, err := durable.Open(os.Getenv(envDB))
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	g, err := tb.Dial(context.Background(), os.Getenv(envURL), tb.WithAccessToken(tbtest.DefaultToken),
		tb.WithQueueStore(q), tb.WithOfflineStart())
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	start, _ := strconv.Atoi(os.Getenv(envStart))
	for i := start; ; i++ {
		batch := make([]tb.Entry, 10)
		for j := range batch {
			n := i*10 + j
			batch[j] = tb.Entry{TS: int64(1 + n), Values: tb.Values{"n": n}}
		}
		dev := fmt.Sprintf("dev-%d", i%4)
		if err := g.Device(dev).PublishTelemetryAsync(context.Background(), batch, nil); err != nil {
			fmt.Println("publish:", err)
			os.Exit(3)
		}
		// Accepted means on disk: report it only now.
		fmt.Fprintf(out, "accepted %d %d\n", i, (i+1)*10)
		out.Flush()
	}
}

// TestDurableQueueSurvivesKill: the publisher is killed with SIGKILL while
// data is queued and in flight; a new gateway on the same queue file sends
// the rest. Every point a publish call accepted arrives.
func TestDurableQueueSurvivesKill(t *testing.T) {
	srv := tbtest.NewServer(t)
	srv.DelayAcks(20 * time.Millisecond) // let a backlog build up
	db := filepath.Join(t.TempDir(), "queue")
	cmd := exec.Command(os.Args[0], "-test.run=^TestDurableChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"=1", envURL+"="+srv.URL(), envDB+"="+db)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	accepted := 0
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "accepted" {
			accepted, _ = strconv.Atoi(f[2])
		} else {
			t.Log("child:", sc.Text())
		}
		if accepted >= 3000 {
			break
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	// Lines written before the kill are still in the pipe: the last one is
	// what the child had accepted when it died.
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "accepted" {
			accepted, _ = strconv.Atoi(f[2])
		}
	}
	_ = cmd.Wait()
	require.GreaterOrEqual(t, accepted, 3000, "child did not stream")
	arrivedBefore := total(srv)
	t.Logf("killed after %d points accepted, %d arrived", accepted, arrivedBefore)
	require.Less(t, arrivedBefore, accepted, "nothing was left to recover; slow the server down")

	srv.DelayAcks(0)
	q, err := durable.Open(db)
	require.NoError(t, err)
	restored, distinct, dups := drainDurable(t, srv, q, accepted)
	t.Logf("accepted %d, arrived %d distinct, %d duplicates, %d records restored from disk", accepted, distinct, dups, restored)
	assert.Greater(t, restored, uint64(0))
	assert.LessOrEqual(t, dups, tb.DefaultMaxInflight*10*4, "duplicates bounded by what can be in flight")
}

func total(srv *tbtest.Server) int {
	n := 0
	for d := 0; d < 4; d++ {
		n += srv.TelemetryCount(fmt.Sprintf("dev-%d", d))
	}
	return n
}

// TestDurableQueueSurvivesRepeatedKills: ten publishers in a row on one
// queue folder, each SIGKILLed mid-stream, every other one with the server
// down (it queues on disk only). A last gateway on the folder, with the
// server up, sends the rest: every point any of them accepted arrives.
func TestDurableQueueSurvivesRepeatedKills(t *testing.T) {
	srv := tbtest.NewServer(t)
	srv.DelayAcks(5 * time.Millisecond)
	db := filepath.Join(t.TempDir(), "queue")
	accepted := 0 // points accepted by all children so far: batches 0 .. accepted/10-1
	for kill := range 10 {
		if kill%2 == 1 {
			srv.Stop()
		} else {
			require.NoError(t, srv.Start())
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestDurableChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), envChild+"=1", envURL+"="+srv.URL(), envDB+"="+db, envStart+"="+strconv.Itoa(accepted/10))
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		sc := bufio.NewScanner(stdout)
		goal := accepted + 500
		for accepted < goal && sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "accepted" {
				accepted, _ = strconv.Atoi(f[2])
			} else {
				t.Log("child:", sc.Text())
			}
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "accepted" {
				accepted, _ = strconv.Atoi(f[2])
			}
		}
		_ = cmd.Wait()
		require.GreaterOrEqual(t, accepted, goal, "child %d did not stream", kill)
	}
	require.NoError(t, srv.Start())
	srv.DelayAcks(0)
	q, err := durable.Open(db)
	require.NoError(t, err)
	restored, distinct, dups := drainDurable(t, srv, q, accepted)
	t.Logf("10 kills, %d points accepted, %d distinct arrived, %d duplicates, %d records restored at the end", accepted, distinct, dups, restored)
	assert.Greater(t, restored, uint64(0), "the last children left data on disk")
}

// drainDurable sends what the queue q holds with a gateway that stays
// until it is all acknowledged, and checks that every point the children
// accepted arrived. It returns the records restored, the distinct points
// and the duplicates.
func drainDurable(t *testing.T, srv *tbtest.Server, q *durable.Log, accepted int) (restored uint64, distinct, dups int) {
	t.Helper()
	g, err := tb.Dial(ctxT(t), srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithQueueStore(q))
	require.NoError(t, err)
	restored = g.Stats().Restored
	require.NoError(t, g.Close(ctxT(t))) // Close flushes while connected
	seen := map[int64]bool{}
	for d := 0; d < 4; d++ {
		for _, p := range srv.Series(fmt.Sprintf("dev-%d", d), "n") {
			if seen[p.Value.(int64)] {
				dups++
			}
			seen[p.Value.(int64)] = true
		}
	}
	for n := 0; n < accepted; n++ {
		require.True(t, seen[int64(n)], "point %d was accepted but never arrived", n)
	}
	return restored, len(seen), dups
}

// TestRepairedQueueCounted: a queue store repaired at open (durable's
// WithRecover) reports what it salvaged and lost in Stats, and every
// salvaged record is sent.
func TestRepairedQueueCounted(t *testing.T) {
	dir := t.TempDir()
	q, err := durable.Open(dir)
	require.NoError(t, err)
	srv := tbtest.NewServer(t)
	srv.Stop()
	ctx := ctxT(t)
	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithOfflineStart(), tb.WithQueueStore(q))
	require.NoError(t, err)
	for i := range 1000 {
		require.NoError(t, g.Device("d").PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, nil))
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_ = g.Close(short) // offline: the queue stays on disk
	cancel()

	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	require.Len(t, segs, 1)
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	require.NoError(t, err)
	st, err := f.Stat()
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 512), st.Size()/2) // zero a stretch in the middle
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, err = durable.Open(dir)
	require.ErrorIs(t, err, durable.ErrDamaged)
	q, err = durable.Open(dir, durable.WithRecover())
	require.NoError(t, err)
	rc := q.Recovery()
	require.Positive(t, rc.Lost)
	require.NoError(t, srv.Start())
	g, err = tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithQueueStore(q))
	require.NoError(t, err)
	s := g.Stats()
	assert.EqualValues(t, rc.Salvaged, s.Salvaged)
	assert.EqualValues(t, rc.Lost, s.LostOnDisk)
	require.NoError(t, g.Close(ctx)) // flushes while connected
	assert.Equal(t, 1000, rc.Salvaged+rc.Lost, "one record a call, each readable or counted lost")
	assert.Equal(t, rc.Salvaged, srv.TelemetryCount("d"), "every salvaged record arrived")
}
