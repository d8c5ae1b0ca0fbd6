package tbgateway_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// TestStatsTelemetry: snapshots of Stats arrive as the gateway's own
// telemetry, paced under the gateway device's own rate limits with the
// rest of its own traffic: the server never has to close the connection.
func TestStatsTelemetry(t *testing.T) {
	srv := tbtest.NewServer(t, tbtest.WithRateLimits(
		tbtest.RateLimits{Messages: "2:1", TelemetryMessages: "2:1"}, tbtest.RateLimits{}))
	g := dialTB(t, srv, tb.WithStatsTelemetry(time.Second))
	ctx := ctxT(t)
	for i := range 4 {
		require.NoError(t, g.Self().PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"boot": i}}))
	}
	require.NoError(t, g.Device("D").PublishTelemetry(ctx, tb.Entry{Values: tb.Values{"t": 1}}))
	gw := "Gateway " + tbtest.DefaultToken
	// Snapshots come every second; a later one counts everything above.
	require.Eventually(t, func() bool {
		p, ok := srv.Latest(gw, "acknowledged")
		return ok && p.Value.(int64) >= 5
	}, 20*time.Second, 10*time.Millisecond)
	for _, key := range []string{"queueDepth", "queueBytes", "inFlight", "published", "resent", "reconnects", "halfOpen",
		"refused", "dropped", "expired", "poisoned", "handlerDropped", "malformed", "ackLatencyMs"} {
		assert.NotEmpty(t, srv.Series(gw, key), key)
	}
	assert.GreaterOrEqual(t, len(srv.Series(gw, "acknowledged")), 2, "a snapshot every second")
	assert.Zero(t, g.Stats().Reconnects, "never over the server's limits")
	_, err := tb.Dial(ctx, srv.URL(), tb.WithStatsTelemetry(time.Millisecond))
	assert.ErrorIs(t, err, tb.ErrInvalidOption)
}

func ExampleWithStatsTelemetry() {
	srv := tbtest.NewServer(nil)
	defer srv.Close()
	ctx := context.Background()
	gw, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithStatsTelemetry(time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer gw.Close(ctx)
	// The first snapshot comes a second after Dial, as the gateway's own telemetry.
	_ = srv.WaitFor(ctx, func() bool { return len(srv.Series("Gateway "+tbtest.DefaultToken, "queueDepth")) > 0 })
	p, _ := srv.Latest("Gateway "+tbtest.DefaultToken, "reconnects")
	fmt.Println("reconnects:", p.Value)
	// Output:
	// reconnects: 0
}
