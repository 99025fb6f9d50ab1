module github.com/sluice-mta/sluice/ingress

go 1.26
