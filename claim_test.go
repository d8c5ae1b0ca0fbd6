package tbgateway_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// TestClaimDurations: a claim reaches the server with its secret and its
// duration rounded up to whole milliseconds; a zero duration leaves the
// server's default, whichever handle claims, and a negative one is
// refused before anything is sent.
func TestClaimDurations(t *testing.T) {
	srv := tbtest.NewServer(t)
	g := dialTB(t, srv)
	ctx := ctxT(t)
	const serverDefault = 86400000 // security.claim.duration, one day
	require.NoError(t, g.Claim(ctx, map[string]tb.ClaimRequest{
		"A": {SecretKey: "k", Duration: 1500 * time.Microsecond},
		"B": {Duration: time.Nanosecond},
		"C": {SecretKey: "only"},
	}))
	require.NoError(t, g.Device("D").Claim(ctx, tb.ClaimRequest{Duration: time.Minute}))
	require.NoError(t, g.Self().Claim(ctx, tb.ClaimRequest{SecretKey: "gw", Duration: 2 * time.Second}))
	assert.ErrorIs(t, g.Device("E").Claim(ctx, tb.ClaimRequest{Duration: -time.Millisecond}), tb.ErrInvalidValue)

	assert.Equal(t, []tbtest.Claim{{SecretKey: "k", DurationMs: 2}}, srv.Claims("A"), "rounded up")
	assert.Equal(t, []tbtest.Claim{{DurationMs: 1}}, srv.Claims("B"), "rounded up, never to zero")
	assert.Equal(t, []tbtest.Claim{{SecretKey: "only", DurationMs: serverDefault}}, srv.Claims("C"))
	assert.Equal(t, []tbtest.Claim{{DurationMs: 60000}}, srv.Claims("D"))
	assert.Equal(t, []tbtest.Claim{{SecretKey: "gw", DurationMs: 2000}}, srv.Claims(srv.GatewayName(tbtest.DefaultToken)))
	assert.Empty(t, srv.Claims("E"))
	_, known := srv.Device("E")
	assert.False(t, known, "nothing was sent for E")
	assert.Empty(t, srv.Rejections())
}
