package tbgateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/thingsgate/tbgateway/internal/outbox"
)

// GatewayDevice is the gateway's own device API (v1/devices/me/*): its
// telemetry, attributes, RPC and claim, as opposed to the devices behind
// it. It has the verbs every device handle has, and client-side RPC.
type GatewayDevice struct{ handle }

// Self returns the gateway's own device API.
func (g *Gateway) Self() *GatewayDevice { return &g.self }

// Call makes a client-side RPC from the gateway itself: it publishes
// {"method":M,"params":P} on v1/devices/me/rpc/request/{id} and returns the
// raw reply from v1/devices/me/rpc/response/{id}. A reply of the form
// {"error":"..."} is returned as *RPCError. params nil sends {}. It blocks
// until the reply or ctx ends (default timeout: WithRequestTimeout).
func (s *GatewayDevice) Call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	g := s.g
	if method == "" {
		return nil, fmt.Errorf("%w: empty RPC method", ErrInvalidValue)
	}
	b, err := encodeCall(method, params)
	if err != nil {
		return nil, err
	}

	ctx, cancel := g.requestContext(ctx)
	defer cancel()
	id := g.newOwnID()
	ch, _ := g.req.calls.Add(id)
	defer g.req.calls.Remove(id)
	if err := g.publish(ctx, &outbox.Record{Topic: topicSelfRPCRequestPrefix + strconv.Itoa(int(id)), Body: b}); err != nil {
		return nil, err
	}
	reply, err := await(ctx, g, ch, func() { g.req.calls.Remove(id) })
	if err != nil {
		return nil, fmt.Errorf("tbgateway: rpc %q: %w", method, err)
	}
	if msg, ok := rpcErrorOf(reply); ok {
		return nil, &RPCError{Method: method, Message: msg}
	}
	return reply, nil
}

// SessionLimits asks the server for this gateway's limits with the
// getSessionLimits RPC. It blocks like Call. The gateway also asks on every
// connect and applies the answer by itself (see WithoutSessionLimits).
func (s *GatewayDevice) SessionLimits(ctx context.Context) (SessionLimits, error) {
	raw, err := s.Call(ctx, methodSessionLimits, nil)
	if err != nil {
		return SessionLimits{}, err
	}
	return decodeSessionLimits(raw)
}
