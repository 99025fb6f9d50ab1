module github.com/sluice-mta/sluice/bouncer

go 1.26.0

require (
	github.com/emersion/go-message v0.18.2
	github.com/sluice-mta/sluice/proto v0.0.0
)

require google.golang.org/protobuf v1.36.12 // indirect
