// Package tbtest provides an in-process fake ThingsBoard server for testing
// MQTT gateway clients, in the spirit of net/http/httptest.
//
// NewServer starts an MQTT listener on a random loopback port (or WithAddr)
// that speaks the ThingsBoard gateway API the way the real ThingsBoard MQTT
// transport does (see WIRE.md in the project): it is not a broker. Uplinks
// on v1/gateway/*, v1/devices/me/* and the v2 short topics are consumed and
// acted on (devices are created, sessions opened, telemetry and attributes
// stored with the server's value typing, attribute requests and
// getSessionLimits answered) and never forwarded to other clients.
// Downlinks (shared attribute updates, RPCs, attribute responses) are
// written to the one gateway connection concerned, whether or not it
// subscribed, at the granted QoS of a matching subscription or else QoS 1.
// A gateway authenticates with its access token as MQTT user name, with
// any password and any client id.
//
// Malformed traffic is answered as ThingsBoard answers it (WIRE §2.2). On
// MQTT 3.1.1: a wrong JSON shape gets a PUBACK and then a TCP close,
// unparseable JSON or an unconvertible value a close without PUBACK, a
// packet longer than the maximum payload size a close, an empty telemetry
// array no PUBACK at all. MQTT 5 clients get ThingsBoard's reason codes
// instead: PUBACK 0x99, 0x83, 0x80, 0x90, 0x97, DISCONNECT 0x83, 0x8B,
// 0x81, the v1/gateway/disconnect notice for a sub-device whose data was
// refused after the PUBACK was decided, CONNACK without properties, topic
// aliases ignored, and nothing of a PUBLISH copied into its PUBACK. Every
// refusal is recorded in Rejections for assertions.
//
// Tests drive the server side with SetSharedAttributes, RPC, GatewayRPC and
// friends (an RPC to a device without a session waits for one, as on the
// real server), inspect what was stored with Device, Latest, Series,
// TelemetryKeys, ClientAttributes and Claims, wait with WaitFor, and inject
// faults with Control (scripted per packet, after franz-go's kfake),
// DropConnection, Stop/Start/Restart, HoldAcks, DelayAcks and
// RefuseConnections. The command cmd/tbtest serves the same server on a
// chosen address for clients in any language.
//
// Not emulated: the protobuf payload variant, Gson's lenient JSON
// (comments, NaN, unquoted strings count as unparseable), the 10-minute
// session inactivity timeout, gateway latency metrics ("metadata" is
// validated, then dropped), MQTT_BASIC and X.509 authentication of
// provisioned devices, OTA packages for sub-devices.
//
// Provisioning (WIRE §10.7) is enabled by WithProvisioning: a CONNECT with
// user name or client id "provision" opens a provision-only session, and
// Provisioned lists what was provisioned; a device provisioned as a
// gateway with an access token can then connect as one. Firmware and
// software for the gateway itself (WIRE §10.8) are assigned with
// AssignFirmware and AssignSoftware, which set the fw_*/sw_* shared
// attributes and serve the package on v2/fw/request/{id}/chunk/{n}.
package tbtest
