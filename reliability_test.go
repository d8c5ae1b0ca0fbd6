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

// TestPoisonMessageSetAside: a message the server answers by closing the
// connection (here: larger than the server's limit, which the gateway was
// not told) is detected after a few drops, set aside and reported; the
// data behind it still arrives.
func TestPoisonMessageSetAside(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(1000))
	g := dialTB(t, srv, tb.WithoutSessionLimits(), tb.WithMaxReconnectDelay(50*time.Millisecond), tb.WithMaxInflight(1))
	ctx := ctxT(t)
	poison := make(chan error, 1)
	require.NoError(t, g.Device("A").PublishTelemetryAsync(ctx, []tb.Entry{{TS: 1, Values: tb.Values{"blob": strings.Repeat("x", 2000)}}}, func(err error) { poison <- err }))
	for i := 0; i < 5; i++ {
		require.NoError(t, g.Device("B").PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(10 + i), Values: tb.Values{"n": i}}}, nil))
	}
	select {
	case err := <-poison:
		assert.ErrorIs(t, err, tb.ErrPoisonMessage)
	case <-time.After(wait):
		t.Fatal("poison message never set aside")
	}
	require.NoError(t, srv.WaitFor(ctx, func() bool { return srv.TelemetryCount("B") == 5 }))
	st := g.Stats()
	assert.Equal(t, uint64(1), st.Poisoned)
	assert.GreaterOrEqual(t, st.Reconnects, uint64(tb.DefaultPoisonThreshold))
	pm := g.PoisonMessages()
	require.Len(t, pm, 1)
	assert.Equal(t, "v1/gateway/telemetry", pm[0].Topic)
	assert.Equal(t, 0, srv.TelemetryCount("A"))
}

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

// TestOverflowPolicies fills the queue while the server is away and checks
// each policy through the public API.
func TestOverflowPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy tb.OverflowPolicy
		check  func(t *testing.T, g *tb.Gateway, first <-chan error, err error)
	}{
		{tb.OverflowFailFast, func(t *testing.T, g *tb.Gateway, _ <-chan error, err error) {
			assert.ErrorIs(t, err, tb.ErrQueueFull)
			assert.Equal(t, uint64(1), g.Stats().Refused)
		}},
		{tb.OverflowDropOldest, func(t *testing.T, g *tb.Gateway, first <-chan error, err error) {
			require.NoError(t, err)
			select {
			case e := <-first:
				assert.ErrorIs(t, e, tb.ErrDropped)
			case <-time.After(wait):
				t.Fatal("the oldest record was not dropped")
			}
			assert.Equal(t, uint64(1), g.Stats().Dropped)
		}},
		{tb.OverflowBlock, func(t *testing.T, g *tb.Gateway, _ <-chan error, err error) {
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		}},
	} {
		t.Run(fmt.Sprint(tc.policy), func(t *testing.T) {
			srv := tbtest.NewServer(t)
			g := dialTB(t, srv, tb.WithQueue(3, 1<<20, tc.policy))
			srv.Stop()
			require.Eventually(t, func() bool { return !g.Connected() }, wait, time.Millisecond)
			ctx := ctxT(t)
			first := make(chan error, 1)
			require.NoError(t, g.Device("A").PublishTelemetryAsync(ctx, []tb.Entry{{TS: 1, Values: tb.Values{"n": 1}}}, func(err error) { first <- err }))
			for i := 2; i <= 3; i++ {
				require.NoError(t, g.Device("A").PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i), Values: tb.Values{"n": i}}}, nil))
			}
			short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			err := g.Device("A").PublishTelemetryAsync(short, []tb.Entry{{TS: 4, Values: tb.Values{"n": 4}}}, nil)
			tc.check(t, g, first, err)
		})
	}
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
