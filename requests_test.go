package tbgateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// Requests that wait for the server's answer: their cancellation, their
// timeout, and answers that come too late.

func TestRequestTimeoutAndCancel(t *testing.T) {
	b := testbroker.Start(t)
	calls := b.Observe(t, "v1/devices/me/rpc/request/+")

	// Cancelled while it waits for the answer, once the request is on the
	// wire, on a gateway whose default request timeout cannot end the
	// call first. (One gateway at a time: on a plain broker a second one
	// would get the first one's requests, and answer them.)
	patient := dial(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() {
		_, err := patient.Self().Call(ctx, "m", nil)
		res <- err
	}()
	calls.Wait(t, "", 1, wait)
	cancel()
	assert.ErrorIs(t, <-res, context.Canceled)
	require.NoError(t, patient.Close(ctxT(t)))

	g := dial(t, b, tb.WithRequestTimeout(100*time.Millisecond))
	_, err := g.Device("A").RequestAttributes(context.Background(), tb.AttributeKeys{Client: []string{"a"}, Shared: []string{"b"}})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	// A late reply is dropped, not delivered to the next caller.
	pub := b.Publisher(t)
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":1,"device":"A","value":1}`)
	_, err = g.Device("A").RequestAttributes(context.Background(), tb.AttributeKeys{Client: []string{"a"}})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
