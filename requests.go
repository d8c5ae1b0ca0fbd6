package tbgateway

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/thingsgate/tbgateway/internal/pending"
)

// requests correlates the gateway's requests with their replies: ids, and
// the tables of replies awaited. Every entry goes on reply, cancellation or
// connection loss, and a late reply is dropped.
type requests struct {
	nextID    atomic.Int32 // gateway attribute requests
	nextOwnID atomic.Int32 // the gateway's own attribute requests and calls
	attrReqs  pending.Table[attrKey, attrReply]
	selfAttrs pending.Table[int32, []byte]
	calls     pending.Table[int32, []byte]
}

func (g *Gateway) failPending(err error) {
	g.req.attrReqs.FailAll(err)
	g.req.selfAttrs.FailAll(err)
	g.req.calls.FailAll(err)
}

// requestContext applies the default request timeout to a context without
// a deadline.
func (g *Gateway) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, g.opts.requestTimeout)
}

// newID returns the next id of a gateway attribute request, a positive
// int32 as the server reads ids with getAsInt.
func (g *Gateway) newID() int32 { return nextPositive(&g.req.nextID) }

// newOwnID returns the next id of the gateway's own requests and calls.
func (g *Gateway) newOwnID() int32 { return nextPositive(&g.req.nextOwnID) }

func nextPositive(c *atomic.Int32) int32 {
	for {
		id := c.Add(1)
		if id > 0 {
			return id
		}
		c.CompareAndSwap(id, 0)
	}
}

// await waits for a reply registered in a pending table.
func await[V any](ctx context.Context, g *Gateway, ch <-chan pending.Reply[V], cancel func()) (V, error) {
	select {
	case r := <-ch:
		return r.Value, r.Err
	case <-ctx.Done():
		cancel()
		var zero V
		return zero, fmt.Errorf("tbgateway: waiting for reply: %w", ctx.Err())
	case <-g.life.done:
		cancel()
		var zero V
		return zero, ErrClosed
	}
}
