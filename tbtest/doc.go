// Package tbtest provides an in-process fake ThingsBoard server for testing
// MQTT gateway clients, in the spirit of net/http/httptest.
//
// NewServer starts an MQTT listener on a random loopback port that speaks the
// ThingsBoard gateway API the way the real ThingsBoard MQTT transport does
// (see WIRE.md in the project): it is not a broker. Uplinks on v1/gateway/*
// and v1/devices/me/* are consumed and acted on (devices are created, sessions
// opened, telemetry and attributes stored with the server's value typing,
// attribute requests and getSessionLimits answered) and never forwarded to
// other clients. Downlinks (shared attribute updates, RPCs, attribute
// responses) are written to the one gateway connection concerned, whether or
// not it subscribed, at the granted QoS of a matching subscription or else
// QoS 1.
//
// Malformed traffic is answered as ThingsBoard answers it on MQTT 3.1.1: a
// wrong JSON shape gets a PUBACK and then a TCP close, unparseable JSON or an
// unconvertible value a close without PUBACK, a packet longer than the
// maximum payload size a close, an empty telemetry array no PUBACK at all.
// Every refusal is recorded in Rejections for assertions.
//
// Tests drive the server side with SetSharedAttributes, RPC, GatewayRPC and
// friends, inspect what was stored with Device, Latest, Series,
// ClientAttributes and Claims, wait with WaitFor, and inject faults with
// DropConnection, Stop/Start/Restart, HoldAcks, DelayAcks and
// RefuseConnections.
//
// The server implements MQTT 3.1.1 semantics. MQTT 5 clients can connect but
// get the same outcomes (no PUBACK reason codes, no DISCONNECT packets), and
// MQTT 5 only downlinks (v1/gateway/disconnect notices) are not sent. The
// protobuf payload variant is not supported, nor is Gson's lenient JSON
// (comments, NaN, unquoted strings count as unparseable), nor the 10-minute
// session inactivity timeout, nor gateway latency metrics ("metadata" is
// validated, then dropped).
package tbtest
