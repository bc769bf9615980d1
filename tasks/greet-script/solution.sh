#!/bin/bash
cat > greet.sh <<'SH'
#!/bin/bash
echo "Hello, ${1:-world}!"
SH
chmod +x greet.sh
