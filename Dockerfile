# syntax=docker/dockerfile:1
# For Docker users. `make image` builds the same image without a Docker
# engine (scripts/image): one file, /nodecreds, on an empty base, run as
# 0:0 with entrypoint /nodecreds and command sync. TLS roots are compiled
# into the binary (golang.org/x/crypto/x509roots/fallback), so the image
# needs no /etc/ssl. The image must be pullable without the credentials
# nodecreds installs: publish it to a registry the nodes can pull from as
# they are (public, or a mirror they already trust).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -buildid= -X main.version=${VERSION}" -o /out/nodecreds ./cmd/nodecreds

FROM scratch
COPY --from=build --chmod=0755 /out/nodecreds /nodecreds
USER 0:0
ENTRYPOINT ["/nodecreds"]
CMD ["sync"]
