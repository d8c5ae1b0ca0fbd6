package tbgateway_test

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// The errors of invalid input: every call checks what it is given before
// anything is queued.

func TestInvalidInputSendsNothing(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/#")
	g := dial(t, b)
	ctx := ctxT(t)
	_, err := g.Connect(ctx, "")
	assert.ErrorIs(t, err, tb.ErrInvalidDeviceName)
	assert.ErrorIs(t, g.Disconnect(ctx, ""), tb.ErrInvalidDeviceName)
	assert.ErrorIs(t, g.Device("A").PublishTelemetry(ctx, tb.Entry{TS: 1, Values: tb.Values{"t": math.NaN()}}), tb.ErrInvalidValue)
	assert.ErrorIs(t, g.Device("A").PublishTelemetry(ctx), tb.ErrNoData)
	assert.ErrorIs(t, g.PublishTelemetry(ctx, tb.Telemetry{"": {{Values: tb.Values{"a": 1}}}}), tb.ErrInvalidDeviceName)
	assert.ErrorIs(t, g.PublishAttributes(ctx, tb.Attributes{"A": {}}), tb.ErrNoData)
	assert.ErrorIs(t, g.PublishAttributes(ctx, nil), tb.ErrNoData)
	assert.ErrorIs(t, g.Device("A").PublishAttributes(ctx, tb.Values{"x": make(chan int)}), tb.ErrUnsupportedType)
	_, err = g.Device("A").RequestAttributes(ctx, tb.AttributeKeys{})
	assert.ErrorIs(t, err, tb.ErrNoData)
	_, err = g.Device("A").RequestAttributes(ctx, tb.AttributeKeys{Client: []string{""}})
	assert.ErrorIs(t, err, tb.ErrInvalidKey)
	_, err = g.Self().RequestAttributes(ctx, tb.AttributeKeys{Client: []string{"a,b"}})
	assert.ErrorIs(t, err, tb.ErrInvalidKey)
	assert.ErrorIs(t, g.Claim(ctx, map[string]tb.ClaimRequest{"A": {Duration: -time.Second}}), tb.ErrInvalidValue)
	_, err = g.Self().Call(ctx, "", nil)
	assert.ErrorIs(t, err, tb.ErrInvalidValue)
	_, err = g.Self().Call(ctx, "m", math.Inf(1))
	assert.ErrorIs(t, err, tb.ErrInvalidValue)
	// The marker barrier: whatever was sent by mistake arrives before it.
	msgs := marker(t, g, obs)
	require.Len(t, msgs, 1, "only the marker was sent: %v", msgs)
}
