package tbgateway_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// Poison messages: data the server answers by closing the connection is
// found out and set aside (WithPoisonThreshold).

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

// poisonDrops counts the connections srv closed because a packet was over
// its maximum payload size: each one a loss the poison message caused.
func poisonDrops(srv *tbtest.Server) int {
	n := 0
	for _, r := range srv.Rejections() {
		if r.Closed && strings.Contains(r.Reason, "maxPayloadSize") {
			n++
		}
	}
	return n
}

// TestPoisonThreshold: the threshold is the number of losses a suspect
// message costs in each of detection's two rounds (the message as it was
// sent, then each of its records alone), so a poison record is set aside
// after 2 × threshold connections, and a smaller threshold gives up on it
// sooner; 0 turns detection off and the gateway keeps sending it.
//
// Losses less than 250 ms after the last one counted count once (a
// flapping server is not a poison loop). The back-off here (at least
// 125 ms for the first retry, 250 ms for the second and 300 ms after
// that) lets only the second loss come that soon: a threshold of n costs
// 2n or 2n+1 connections.
func TestPoisonThreshold(t *testing.T) {
	type run struct {
		srv        *tbtest.Server
		g          *tb.Gateway
		poisoned   chan error
		reconnects atomic.Uint64 // Stats().Reconnects when the poison callback ran
	}
	start := func(threshold int) *run {
		r := &run{srv: tbtest.NewServer(t, tbtest.WithMaxPayloadSize(1000)), poisoned: make(chan error, 1)}
		// The gateway is not told the server's limit: the entry goes out,
		// and the server closes the connection on reading it.
		r.g = dialTB(t, r.srv, tb.WithoutSessionLimits(), tb.WithMaxInflight(1),
			tb.WithMaxReconnectDelay(600*time.Millisecond), tb.WithPoisonThreshold(threshold))
		require.NoError(t, r.g.Device("A").PublishTelemetryAsync(ctxT(t), []tb.Entry{{TS: 1, Values: tb.Values{"blob": strings.Repeat("x", 2000)}}}, func(err error) {
			r.reconnects.Store(r.g.Stats().Reconnects)
			r.poisoned <- err
		}))
		return r
	}
	// All three at once, each on its own server: the test takes as long
	// as the slowest.
	one, three, off := start(1), start(3), start(0)

	setAside := func(r *run, threshold int) int {
		t.Helper()
		select {
		case err := <-r.poisoned:
			require.ErrorIs(t, err, tb.ErrPoisonMessage)
		case <-time.After(wait):
			t.Fatalf("threshold %d: the poison message was never set aside", threshold)
		}
		// Set aside, it is never sent again: the count is final.
		drops := poisonDrops(r.srv)
		st := r.g.Stats()
		t.Logf("threshold %d: set aside after %d connections closed by the server (%d reconnects at the callback)", threshold, drops, r.reconnects.Load())
		assert.GreaterOrEqual(t, drops, 2*threshold, "threshold %d", threshold)
		assert.LessOrEqual(t, drops, 2*threshold+1, "threshold %d", threshold)
		assert.Equal(t, uint64(1), st.Poisoned)
		assert.Equal(t, uint64(1), st.Isolated, "one round with the record alone")
		require.Len(t, r.g.PoisonMessages(), 1)
		assert.Equal(t, 0, r.srv.TelemetryCount("A"))
		return drops
	}
	dropsOne := setAside(one, 1)
	dropsThree := setAside(three, 3)
	assert.Less(t, dropsOne, dropsThree, "a smaller threshold sets the message aside after fewer connections")
	assert.Less(t, one.reconnects.Load(), three.reconnects.Load())

	// Off: the server keeps closing the connection, and the gateway keeps
	// sending the message. With the default threshold it would have been
	// set aside by the 7th loss (6 counted); by the 8th drop the
	// gateway has dealt with the 7th and sent the message once more.
	require.Eventually(t, func() bool {
		return poisonDrops(off.srv) >= 2*tb.DefaultPoisonThreshold+2 || off.g.Stats().Poisoned > 0
	}, wait, 10*time.Millisecond)
	st := off.g.Stats()
	assert.Zero(t, st.Poisoned, "detection is off")
	assert.Zero(t, st.Isolated)
	assert.Zero(t, len(off.g.PoisonMessages()), "nothing set aside")
	assert.Zero(t, len(off.poisoned), "no call failed as poison")
	assert.GreaterOrEqual(t, st.Reconnects, uint64(2*tb.DefaultPoisonThreshold+1))
}
