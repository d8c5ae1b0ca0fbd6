package tbgateway_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// Options: what Dial refuses, and options whose effect shows on the wire.
// (How WithRateLimitMargin scales the limits is in
// sender_internal_test.go.)

func TestOptionsRefused(t *testing.T) {
	ctx := ctxT(t)
	for _, opt := range []tb.Option{
		tb.WithAccessToken(""), tb.WithKeepAlive(0), tb.WithConnectTimeout(0), tb.WithRequestTimeout(-1),
		tb.WithMaxPayloadSize(1), tb.WithHandlerQueue(0, 1), tb.WithLogger(nil), tb.WithTLSConfig(nil),
		tb.WithRootCAs(nil), tb.WithCAFile("/nonexistent"), tb.WithPahoOptions(nil), tb.WithMaxReconnectDelay(0),
		tb.WithBasicCredentials("", "", "p"),
		tb.WithPoisonThreshold(-1), tb.WithRateLimitMargin(0), tb.WithRateLimitMargin(-0.5), tb.WithRateLimitMargin(1.01),
		tb.WithRateLimitMargin(math.Inf(1)), tb.WithRateLimitMargin(math.NaN()),
	} {
		_, err := tb.Dial(ctx, "tcp://127.0.0.1:1", opt)
		assert.ErrorIs(t, err, tb.ErrInvalidOption)
	}
	for _, u := range []string{"127.0.0.1:1883", "http://127.0.0.1:1", "::"} {
		_, err := tb.Dial(ctx, u)
		assert.ErrorIs(t, err, tb.ErrInvalidOption, u)
	}
}

func TestQoS0(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	g := dial(t, b, tb.WithQoS(0))
	require.NoError(t, g.Device("A").PublishTelemetry(ctxT(t), tb.Entry{Values: tb.Values{"a": 1}}))
	obs.Wait(t, "v1/gateway/telemetry", 1, wait)
	_, err := tb.Dial(ctxT(t), b.URL, tb.WithQoS(2))
	assert.ErrorIs(t, err, tb.ErrInvalidOption)
}
