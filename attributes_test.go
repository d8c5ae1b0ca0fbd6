package tbgateway_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/internal/testbroker"
)

// Attributes: requests for them in the form the server accepts. (Their
// floats are in telemetry_test.go with the telemetry's.)

// TestAttributeRequestNeverCombined: a request for both scopes goes out as
// two one-scope requests, the only form a released server accepts
// (WIRE.md 10.5; the combined form of the docs closes the connection).
func TestAttributeRequestNeverCombined(t *testing.T) {
	b := testbroker.Start(t)
	obs := b.Observe(t, "v1/gateway/attributes/#")
	pub := b.Publisher(t)
	g := dial(t, b)
	res := make(chan tb.AttributeValues, 1)
	go func() {
		r, err := g.Device("A").RequestAttributes(ctxT(t), tb.AttributeKeys{Client: []string{"k1"}, Shared: []string{"k3", "k4"}})
		assert.NoError(t, err)
		res <- r
	}()
	reqs := obs.Wait(t, "v1/gateway/attributes/request", 2, wait)
	sameJSON(t, `{"id":1,"device":"A","client":true,"key":"k1"}`, reqs[0].Payload)
	sameJSON(t, `{"id":2,"device":"A","client":false,"keys":["k3","k4"]}`, reqs[1].Payload)
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":1,"device":"A","value":1}`)
	pub.Publish(t, "v1/gateway/attributes/response", `{"id":2,"device":"A","values":{"k3":"x","k4":true}}`)
	assert.Equal(t, tb.AttributeValues{Client: tb.Values{"k1": int64(1)}, Shared: tb.Values{"k3": "x", "k4": true}}, <-res)
}
